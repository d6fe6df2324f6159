"""Walk through the Gradio demo in a real headless Chromium, check what a user sees, and save
screenshots.

    apt-get install -y chromium chromium-driver  # Debian's browser and its WebDriver
    .venv/bin/pip install selenium               # only for this script; not a package dependency
    .venv/bin/python tools/app_screenshots.py    # built-in default model
                                                 # (writes docs/images/app_*.png)

The script serves the app (tools/app.py's model, built in this process) on a free localhost port
and, in the browser: checks that the intro shows the prompt syntax (<mark>, <region>) as text;
uploads the built-in image; checks that asking without an image says "upload an image first", that
Shift+Enter adds a line and Enter asks; waits for the answer with its highlighted phrase and
mask (screenshot app_answer.png); checks that the prompts were cleared after the question; in
Segment mode clicks on one shape and drags a box around another and waits for their masks
(screenshot app_segment.png); drags a box in Box mode; uploads a new image and checks that the
answer and masks are gone; opens the API page and checks its descriptions. Each check
prints one line; the first failure stops with exit status 1. Screenshots are saved as 256-colour
PNGs.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from omg_llava.config_paths import config_argument
from omg_llava.inference.defaults import (DEFAULT_CONFIG, DEFAULT_IMAGE, DEFAULT_PROMPT,
                                          checkpoint_for)

# Image pixels (x, y) of the built-in demo image's shapes: the cyan square's centre and a box around
# the yellow square (the image is 128x128).
CYAN_POINT = (27, 45)
YELLOW_BOX = (48, 31, 111, 98)


class CheckFailed(Exception):
    """A check of the walk-through failed."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG, type=config_argument,
                        help=f'model config: a path or a built-in name (default {DEFAULT_CONFIG})')
    parser.add_argument('--pth',
                        help='checkpoint (default: the committed one for the default config)')
    parser.add_argument('--image', default=DEFAULT_IMAGE,
                        help='image to upload (default: the built-in one)')
    parser.add_argument('--out-dir', default='docs/images',
                        help='where app_answer.png and app_segment.png go')
    parser.add_argument('--chromium', default='/usr/bin/chromium', help='the browser binary')
    parser.add_argument('--chromedriver', default='/usr/bin/chromedriver', help='its WebDriver')
    parser.add_argument('--timeout', type=float, default=180,
                        help='seconds to wait for each answer')
    parser.add_argument('--width', type=int, default=1200, help='browser window width')
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Walk:
    """The browser session and its checks."""

    def __init__(self, driver, timeout: float) -> None:
        self.driver, self.timeout = driver, timeout

    def check(self, ok: bool, what: str) -> None:
        print(f'{"ok  " if ok else "FAIL"} {what}', flush=True)
        if not ok:
            raise CheckFailed(what)

    def wait(self, condition, what: str, timeout: float | None = None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = condition()
            if value:
                print(f'ok   {what}', flush=True)
                return value
            time.sleep(0.2)
        self.check(False, f'{what} (waited {timeout or self.timeout:.0f} s)')

    def find(self, css: str):
        from selenium.webdriver.common.by import By
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def textbox(self, label: str):
        """The textarea/input whose label starts with ``label``."""
        return self.js("""for (const l of document.querySelectorAll('label')) {
            if (l.innerText.trim().startsWith(arguments[0])) {
            const f = l.querySelector('textarea, input'); if (f) return f; } }
            return null;""", label)

    def answer_html(self) -> str:
        return self.js("const a = document.querySelector('.omg-answer, .omg-error'); return a ? "
                       "a.outerHTML : '';")

    def masks_src(self) -> str:
        return self.js("""
            for (const l of document.querySelectorAll('[data-testid="block-label"]')) {
            if (l.innerText.trim() === 'Masks') {
            const img = l.closest('.block').querySelector('img'); return img ? img.src : ''; } }
            return '';""")

    def view_point(self, x: float, y: float) -> tuple[float, float]:
        """Client coordinates of image pixel (x, y) on the prompt view (object-fit: contain)."""
        r = self.js("""const i = document.querySelector('#omg-prompt-view img');
            const b = i.getBoundingClientRect();
            return [b.left, b.top, b.width, b.height, i.naturalWidth, i.naturalHeight];""")
        left, top, w, h, nw, nh = r
        scale = min(w / nw, h / nh)
        return (left + (w - nw * scale) / 2 + (x + 0.5) * scale,
                top + (h - nh * scale) / 2 + (y + 0.5) * scale)

    def mouse(self, *steps: tuple[str, float, float]) -> None:
        """Real pointer input: ('down'|'move'|'up'|'click', client x, client y)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        actions = ActionBuilder(self.driver)
        for kind, x, y in steps:
            actions.pointer_action.move_to_location(round(x), round(y))
            if kind in ('down', 'click'):
                actions.pointer_action.pointer_down()
            if kind in ('up', 'click'):
                actions.pointer_action.pointer_up()
        actions.perform()

    def upload(self, path: str) -> None:
        field = self.wait(lambda: self.find('input[type=file]'), 'the image upload field is there')
        field.send_keys(os.path.abspath(path))
        self.wait(lambda: self.find('#omg-prompt-view img'),
                  'the prompt view shows the uploaded image')

    def choose_mode(self, prefix: str) -> None:
        self.js("""for (const l of document.querySelectorAll('label')) {
            if (l.innerText.trim().startsWith(arguments[0])) { l.click(); return; } }""", prefix)

    def screenshot(self, path: str) -> None:
        from PIL import Image
        height = self.js('return document.documentElement.scrollHeight;')
        width = self.js('return window.outerWidth;')
        self.driver.set_window_size(width, height + 120)
        time.sleep(0.5)
        self.driver.save_screenshot(path)
        Image.open(path).convert('RGB').quantize(256).save(path, optimize=True)
        print(f'     screenshot {path} ({os.path.getsize(path) // 1024} KB)', flush=True)


def walk_through(walk: Walk, image: str, out_dir: str) -> None:
    from selenium.webdriver.common.keys import Keys
    body = walk.wait(lambda: walk.js("return document.body.innerText.includes('On the Prompts "
                                     "view') && document.body.innerText;"), 'the page loads')
    walk.check('written <mark> in the question' in body and 'written <region>' in body,
               'the intro shows <mark> and <region> as text')
    walk.check('Point → <mark>' in body, 'the mode labels show <mark> as text')

    question = walk.textbox('Question')
    question.send_keys('What is this?', Keys.ENTER)
    walk.wait(lambda: 'upload an image first' in walk.answer_html(),
              'asking without an image says so')
    question.send_keys(Keys.CONTROL, 'a', Keys.CONTROL, Keys.DELETE)
    walk.upload(image)
    walk.wait(lambda: not walk.answer_html(), 'the upload cleared the answer')
    question.send_keys('first line', Keys.SHIFT, Keys.ENTER, Keys.SHIFT, 'second line')
    walk.check(question.get_attribute('value') == 'first line\nsecond line',
               'Shift+Enter adds a line')
    question.send_keys(Keys.CONTROL, 'a', Keys.CONTROL, Keys.DELETE)
    question.send_keys(DEFAULT_PROMPT, Keys.ENTER)
    answer = walk.wait(lambda: 'omg-phrase' in walk.answer_html() and walk.masks_src()
                       and walk.answer_html(),
                       'Enter asks: the answer has a highlighted phrase and a mask image')
    walk.check('\n' not in question.get_attribute('value'),
               'Enter did not add a line to the question')
    walk.check('background-color' in answer,
               f'the phrase is highlighted in its mask colour: {answer[:160]}…')
    walk.screenshot(os.path.join(out_dir, 'app_answer.png'))

    # a point, a question that uses it, then the prompts are gone
    x, y = walk.view_point(*CYAN_POINT)
    walk.mouse(('click', x, y))
    points = walk.textbox('Points')
    walk.wait(lambda: json.loads(points.get_attribute('value') or '[]'), 'a click adds a point')
    question.send_keys(Keys.CONTROL, 'a', Keys.CONTROL, Keys.DELETE)
    question.send_keys('There are some marks: Mark 1 <mark>. What is at Mark 1?', Keys.ENTER)
    walk.wait(lambda: points.get_attribute('value') == '[]',
              'the prompts are cleared after the question')
    walk.check('omg-error' not in walk.answer_html(), 'the question with a point was answered')

    # segment mode: a click and a drag, each a mask at once
    walk.choose_mode('Segment')
    walk.mouse(('click', x, y))
    walk.wait(lambda: 'point 1' in walk.answer_html(), 'segment mode: a click shows its mask')
    x1, y1 = walk.view_point(*YELLOW_BOX[:2])
    x2, y2 = walk.view_point(*YELLOW_BOX[2:])
    walk.mouse(('down', x1, y1), ('move', (x1 + x2) / 2, (y1 + y2) / 2), ('move', x2, y2),
               ('up', x2, y2))
    walk.wait(lambda: 'box 1' in walk.answer_html(),
              'segment mode: a drag shows the mask of the box')
    boxes = json.loads(walk.textbox('Boxes').get_attribute('value'))
    walk.check(len(boxes) == 1 and all(abs(a - b) <= 2 for a, b in zip(boxes[0], YELLOW_BOX)),
               f'the dragged box is in image pixels: {boxes} ~ {list(YELLOW_BOX)}')
    walk.check(len(json.loads(points.get_attribute('value'))) == 1, 'the drag added no point')
    walk.screenshot(os.path.join(out_dir, 'app_segment.png'))

    # box mode: a drag adds a box too
    walk.choose_mode('Box')
    walk.mouse(('down', x2, y2), ('move', x1, y1), ('up', x1, y1))
    walk.wait(lambda: len(json.loads(walk.textbox('Boxes').get_attribute('value'))) == 2,
              'box mode: a drag adds a box')

    # a new image clears the answer and the masks
    walk.upload(image if image.endswith('.png') else _flipped_copy(image, out_dir))
    walk.wait(lambda: not walk.answer_html() and not walk.masks_src(),
              'a new image clears the answer and masks')

    # the API page: descriptions in plain words, prompt tokens as text
    walk.js("""for (const b of document.querySelectorAll('footer button, footer a')) {
        if (b.innerText.includes('API')) { b.click(); return; } }""")
    api = walk.wait(lambda: walk.js("const t = document.body.innerText; return "
                                    "t.includes('/segment') && t;"),
                    'the API page lists /ask, /click and /segment')
    walk.check('k-th <mark>' in api and '``' not in api,
               'the API page shows <mark> as text, no RST backticks')


def _flipped_copy(path: str, out_dir: str) -> str:
    import tempfile

    from PIL import Image
    target = os.path.join(tempfile.mkdtemp(), 'flipped.png')
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from selenium import webdriver
    except ImportError:
        print('error: selenium is not installed: .venv/bin/pip install selenium (and apt-get '
              'install -y chromium chromium-driver)', file=sys.stderr)
        return 2
    for flag, path in (('--chromium', args.chromium), ('--chromedriver', args.chromedriver)):
        if not os.path.isfile(path):
            print(f'error: {flag} {path} not found: apt-get install -y chromium chromium-driver',
                  file=sys.stderr)
            return 2
    os.makedirs(args.out_dir, exist_ok=True)
    from omg_llava.inference.app_ui import build_demo, launch_demo
    from omg_llava.inference.chat import OMGLLaVAChat
    chat, _ = OMGLLaVAChat.from_config(args.config, pth=checkpoint_for(args.config, args.pth))
    demo = build_demo(chat, examples=[(DEFAULT_IMAGE, DEFAULT_PROMPT)])
    port = _free_port()
    launch_demo(demo, port=port, prevent_thread_lock=True)
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                 f'--window-size={args.width},1000'):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(args.chromedriver))
    try:
        driver.get(f'http://127.0.0.1:{port}/')
        walk_through(Walk(driver, args.timeout), args.image, args.out_dir)
    except CheckFailed:
        driver.save_screenshot(os.path.join(args.out_dir, 'app_failure.png'))
        print(f'the page at the failure: {os.path.join(args.out_dir, "app_failure.png")}',
              file=sys.stderr)
        return 1
    finally:
        driver.quit()
        demo.close()
    print('all checks passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
