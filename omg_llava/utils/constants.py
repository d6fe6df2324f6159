"""Constants shared across the plugin (spec §1.1 and §5.2)."""

IMAGE_TOKEN_INDEX = -200  # id that marks where the visual tokens are spliced in
IGNORE_INDEX = -100  # label of unsupervised positions
DEFAULT_PAD_TOKEN_ID = 0  # input-id padding used by the collate function

DEFAULT_IMAGE_TOKEN = '<image>'
SEG_TOKEN = '[SEG]'
PHRASE_START = '<p>'
PHRASE_END = '</p>'
REGION_TOKEN = '<region>'
MARK_TOKEN = '<mark>'

# OpenAI CLIP pixel statistics (RGB, for pixels scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
