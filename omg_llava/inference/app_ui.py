"""The Gradio demo (spec §9.2): ask about an image with point and box prompts, see coloured phrases
and masks, or segment what you click without a question.

``tools/app.py`` is the command line; everything here is importable so tests can drive it:

* :func:`build_demo` makes the ``gr.Blocks``; :func:`launch_demo` serves it (with the page's CSS and
  the drag-a-box script, which Gradio 6 takes at launch).
* :class:`~.app_callbacks.ChatApp` holds the callbacks; the page and the named API endpoints
  ``/ask``, ``/click`` and ``/segment`` call the same methods (docs/app.md).
* :mod:`.app_render` draws: mask colours picked against the pixels under them, the phrase before the
  k-th ``[SEG]`` highlighted in mask k's colour.

Prompts. In "point" mode a click adds a point (the k-th ``<mark>`` of the question); in "box" mode a
drag, or two clicks on opposite corners, adds a box (the k-th ``<region>``); in "segment" mode a
click (point) or a drag (box) shows the mask of every prompt from the OMG-Seg head alone, no
question needed. A drag adds a box in any mode. Gradio's image has no drag event, so :data:`DRAG_JS`
watches the mouse on the prompt view, maps the rectangle to image pixels as Gradio maps clicks, and
sends it through a hidden text box and button. Prompts go with the next answered question and are
cleared after it. Unlike the reference app (spec §10.11) both box corners are shifted into the
padded square (:meth:`~omg_llava.inference.image_io.SquareGeometry.boxes_to_input`).
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from .app_callbacks import BOX_MODE, EMPTY_PROMPTS, POINT_MODE, SEGMENT_MODE, ChatApp
from .chat import OMGLLaVAChat

# Markdown: every prompt token sits in a code span, or the browser would take it for an HTML tag.
INTRO = """# OMG-LLaVA
Upload an image, add prompts on the **Prompts** view, then ask: **Enter** asks, **Shift+Enter**
starts a new line.
* **Point**: a click adds a point, written `<mark>` in the question. **Box**: drag a rectangle (or
  click two opposite corners), written `<region>`. The k-th `<mark>` is point k and the k-th
  `<region>` is box k; the prompts go with the next question.
* **Segment**: a click or a drag shows the object's mask at once, from the segmentation head alone.

Wordings in the form the models were trained with: `Please segment the cat in this image.`,
`There are some marks: Mark 1 <mark>. What is at Mark 1?`,
`There are some regions: region1 <region>. What is region1?`"""

QUESTION_PLACEHOLDER = 'e.g. Please segment the largest shape in this image.'

MODES = [('Point → <mark>', POINT_MODE), ('Box → <region> (drag, or click two corners)', BOX_MODE),
         ('Segment: click or drag → mask, no question', SEGMENT_MODE)]

API_DESCRIPTIONS = {
    'ask': 'Answer a question about the image. The k-th <mark> in the question is the k-th point '
           'and the k-th <region> the k-th box (JSON lists in image pixels). Returns the answer as '
           'HTML and the image with its masks.',
    'click': 'What a click at (x, y) on the prompt view does: in point or segment mode it adds a '
             'point, in box mode a box corner. Returns the new points and boxes JSON, the prompt '
             'view and a hint.',
    'segment': 'One mask per point and per box from the segmentation head alone (no question). '
               'Returns the masks listed as HTML and the image with the masks.',
}

# pixels of the prompt view and the masks; images are scaled to fit (small ones up)
VIEW_HEIGHT = 320
CSS = """
#omg-prompt-view img { cursor: crosshair; user-select: none; -webkit-user-drag: none; }
#omg-prompt-view .image-frame, #omg-masks .image-frame { width: 100%; height: 100%; }
#omg-prompt-view img, #omg-masks img { width: 100%; height: 100%; object-fit: contain; }
.omg-band { position: fixed; border: 2px dashed rgb(0, 200, 255);
            background: rgba(0, 200, 255, 0.15); pointer-events: none; z-index: 1000; }
"""

# Drag a rectangle on the prompt view → a box. Gradio 6 runs this once on page load as a <script>
# (hence the immediately called function). It listens on the document (capture phase) because Gradio
# re-renders the <img>. A press-move-release of at least MIN_DRAG screen pixels is a drag: the click
# the browser fires after it is swallowed so it adds no point. Image coordinates follow Gradio's own
# click mapping (object-fit: contain), clamped to the image.
DRAG_JS = """
(() => {
  const MIN_DRAG = 6;
  let start = null, band = null, dragEnd = 0;
  const viewImage = (e) => (e.target instanceof HTMLImageElement
                            && e.target.closest('#omg-prompt-view')) ? e.target : null;
  const toImage = (img, cx, cy) => {
    const r = img.getBoundingClientRect();
    const sx = img.naturalWidth / r.width, sy = img.naturalHeight / r.height;
    let x, y;
    if (sx > sy) {
      y = (cy - r.top - (r.height - img.naturalHeight / sx) / 2) * sx;
      x = (cx - r.left) * sx;
    } else {
      x = (cx - r.left - (r.width - img.naturalWidth / sy) / 2) * sy;
      y = (cy - r.top) * sy;
    }
    const clamp = (v, n) => Math.min(Math.max(Math.round(v), 0), n);
    return [clamp(x, img.naturalWidth), clamp(y, img.naturalHeight)];
  };
  document.addEventListener('mousedown', (e) => {
    const img = viewImage(e);
    if (!img || e.button !== 0) return;
    e.preventDefault();  // no native image drag, no text selection
    start = {img, x: e.clientX, y: e.clientY};
  }, true);
  document.addEventListener('mousemove', (e) => {
    if (!start || Math.hypot(e.clientX - start.x, e.clientY - start.y) < MIN_DRAG) return;
    if (!band) {
      band = document.createElement('div');
      band.className = 'omg-band';
      document.body.append(band);
    }
    Object.assign(band.style, {left: Math.min(start.x, e.clientX) + 'px',
      top: Math.min(start.y, e.clientY) + 'px', width: Math.abs(e.clientX - start.x) + 'px',
      height: Math.abs(e.clientY - start.y) + 'px'});
  }, true);
  document.addEventListener('mouseup', (e) => {
    if (!start) return;
    const s = start;
    start = null;
    if (band) { band.remove(); band = null; }
    // a click: Gradio handles it
    if (Math.hypot(e.clientX - s.x, e.clientY - s.y) < MIN_DRAG) return;
    dragEnd = performance.now();
    const box = [...toImage(s.img, s.x, s.y), ...toImage(s.img, e.clientX, e.clientY)];
    const field = document.querySelector('#omg-drag-box textarea, #omg-drag-box input');
    field.value = JSON.stringify(box);
    field.dispatchEvent(new Event('input', {bubbles: true}));
    setTimeout(() => document.querySelector('#omg-drag-button').click(), 0);
  }, true);
  document.addEventListener('click', (e) => {
    if (performance.now() - dragEnd < 400 && e.target.closest
        && e.target.closest('#omg-prompt-view')) {
      e.stopPropagation();
      e.preventDefault();
    }
  }, true);
})();
"""


def build_demo(chat: OMGLLaVAChat, *, max_new_tokens: int = 256,
               generation_kwargs: dict[str, Any] | None = None,
               examples: list[tuple[str, str]] | None = None) -> gr.Blocks:
    """The Blocks app (see the module docstring); call :func:`launch_demo` to serve it.

    ``examples``: (image path, question) pairs shown under the question box; a click fills both
    in."""
    app = ChatApp(chat, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
    with gr.Blocks(title='OMG-LLaVA', analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        session = gr.State(None)
        pending = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(label='Image', type='numpy', sources=['upload', 'clipboard'],
                                 height=220)
                prompt_view = gr.Image(label='Prompts (click to add a point, drag to add a box)',
                                       type='numpy',
                                       interactive=False, format='png', elem_id='omg-prompt-view',
                                       buttons=['fullscreen'], height=VIEW_HEIGHT)
                mode = gr.Radio(MODES, value=POINT_MODE, label='On the Prompts view')
                hint = gr.Markdown()
                with gr.Row():
                    points = gr.Textbox(EMPTY_PROMPTS, label='Points [[x, y], …] (pixels)')
                    boxes = gr.Textbox(EMPTY_PROMPTS, label='Boxes [[x1, y1, x2, y2], …] (pixels)')
                clear = gr.Button('Clear prompts')
            with gr.Column():
                question = gr.Textbox(label='Question (Enter asks, Shift+Enter adds a line)',
                                      lines=1, max_lines=6, placeholder=QUESTION_PLACEHOLDER)
                follow_up = gr.Checkbox(False, label='Follow up (keep the conversation)')
                ask = gr.Button('Ask', variant='primary')
                answer = gr.HTML(label='Answer')
                overlay = gr.Image(label='Masks', type='numpy', interactive=False, format='png',
                                   elem_id='omg-masks', height=VIEW_HEIGHT)
        if examples:
            gr.Examples([list(e) for e in examples], inputs=[image, question], label='Examples')
        # the /click and /segment endpoints (hidden buttons) and the drag bridge of DRAG_JS
        x, y = gr.Number(label='x', visible=False), gr.Number(label='y', visible=False)
        click_api = gr.Button(visible=False)
        segment_api = gr.Button(visible=False)
        drag_box = gr.Textbox(visible='hidden', elem_id='omg-drag-box')
        drag_button = gr.Button(visible='hidden', elem_id='omg-drag-button')

        private = dict(api_visibility='private')
        prompt_outputs = [points, boxes, prompt_view, hint, pending]
        segment_io = dict(fn=app.segment_in_mode, inputs=[image, points, boxes, mode],
                          outputs=[answer, overlay], **private)
        ask_io = dict(fn=app.ask, inputs=[session, image, question, points, boxes, follow_up],
                      outputs=[session, answer, overlay])
        after_ask = dict(fn=app.after_ask, inputs=[session, image], outputs=prompt_outputs,
                         **private)
        ask.click(**ask_io, api_name='ask',
                  api_description=API_DESCRIPTIONS['ask']).then(**after_ask)
        question.submit(**ask_io, **private).then(**after_ask)

        click_api.click(app.click, [image, points, boxes, mode, x, y, pending], prompt_outputs,
                        api_name='click', api_description=API_DESCRIPTIONS['click'])
        segment_api.click(app.segment, [image, points, boxes], [answer, overlay],
                          api_name='segment', api_description=API_DESCRIPTIONS['segment'])

        def on_select(image, points_json, boxes_json, mode, pending, evt: gr.SelectData):
            return app.click(image, points_json, boxes_json, mode, *evt.index, pending)

        prompt_view.select(on_select, [image, points, boxes, mode, pending], prompt_outputs,
                           **private).then(**segment_io)
        drag_button.click(app.drag, [image, points, boxes, mode, drag_box, pending], prompt_outputs,
                          **private).then(**segment_io)
        mode.change(**segment_io)
        clear.click(app.clear, image, prompt_outputs, **private)
        image.change(app.new_image, image, [*prompt_outputs, answer, overlay], **private)
        for box in (points, boxes):
            box.input(app.redraw, [image, points, boxes, pending], [prompt_view, hint], **private)
    return demo


def launch_demo(demo: gr.Blocks, *, host: str = '127.0.0.1', port: int = 7860, share: bool = False,
                prevent_thread_lock: bool = False) -> None:
    """Serve ``demo`` (queued, errors shown in the page, with :data:`CSS` and :data:`DRAG_JS`);
    ``share`` opens a public gradio.live link."""
    demo.queue().launch(server_name=host, server_port=port, share=share, show_error=True,
                        prevent_thread_lock=prevent_thread_lock, footer_links=['api'], css=CSS,
                        js=DRAG_JS)
