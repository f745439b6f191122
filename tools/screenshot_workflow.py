"""Draw README's ComfyUI picture: an example workflow in ComfyUI's graph editor, after one run.

Needs a ComfyUI with this pack in ``custom_nodes/`` running at ``--url``, and Playwright for Python with a
Chromium (neither is a dependency of the pack). What README's picture was made with, on the CPU:

    ComfyUI 0.3.64 in its own venv (torch 2.14.1, torchvision 0.29.1, its requirements.txt, playwright),
    Debian's chromium; ln -s <this repository> ComfyUI/custom_nodes/muse_nodes
    python ComfyUI/main.py --cpu --port 8188 &
    python tools/screenshot_workflow.py            # -> docs/images/workflow_text_to_image.png

It loads the workflow file into the editor, queues it once, waits until ComfyUI's queue is empty, and
saves the window as a palette PNG (README's pictures stay under 300 KB).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def queue_is_empty(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/queue", timeout=10) as response:  # noqa: S310  (a local ComfyUI)
        queue = json.load(response)
    return not queue["queue_running"] and not queue["queue_pending"]


def set_setting(url: str, name: str, value) -> None:
    request = urllib.request.Request(f"{url}/settings/{name}", data=json.dumps(value).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()  # noqa: S310  (a local ComfyUI)


def screenshot(url: str, workflow: Path, out: Path, chromium: str, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415  (a tool's dependency, not the pack's)

    graph = json.loads(workflow.read_text())
    set_setting(url, "Comfy.TutorialCompleted", True)  # no "Get started with a template" dialog
    for overlay in ("Comfy.Minimap.Visible", "Comfy.Graph.CanvasInfo", "Comfy.Graph.CanvasMenu"):
        set_setting(url, overlay, False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_function("() => window.app && window.app.graph", timeout=120_000)
        page.keyboard.press("Escape")  # a first-run dialog (what's new) would cover the graph
        page.evaluate("graph => window.app.loadGraphData(graph)", graph)
        # focus mode: the graph alone, without the menus and side bars around it
        page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        page.evaluate("() => window.app.queuePrompt(0, 1)")
        time.sleep(2)  # the prompt reaches the queue
        deadline = time.monotonic() + TIMEOUT_S
        while not queue_is_empty(url):
            if time.monotonic() > deadline:
                raise SystemExit(f"the workflow did not finish within {TIMEOUT_S} s")
            time.sleep(1)
        time.sleep(2)  # the editor draws the outputs
        png = out.with_suffix(".full.png")
        page.screenshot(path=str(png))
        browser.close()
    Image.open(png).convert("RGB").quantize(colors=256).save(out, optimize=True)
    png.unlink()
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "muse_text_to_image.json")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "images" / "workflow_text_to_image.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--height", type=int, default=744)
    args = parser.parse_args()
    screenshot(args.url.rstrip("/"), args.workflow, args.output, args.chromium, args.width, args.height)


if __name__ == "__main__":
    main()
