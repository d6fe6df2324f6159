"""Inference: build a model from a config (:mod:`.model_builder`), chat with it (:mod:`.chat`), the
app's parts and the tools' built-in defaults (:mod:`.defaults`). Submodules are imported on use (the
tools stay fast)."""
