"""Make docs/web_page.jpg: ``fusionlungseg web`` on the dev volume LUNG1-001 with the default options, Segment lungs
clicked in Debian's chromium (Playwright), the page photographed.

    .venv/bin/python docs/make_web_screenshot.py [--data ../shared/data] [--port 8765] [--server-python PY]

Then it clicks Export and prints the exported label map, to compare with ``fusionlungseg segment``'s.
``--server-python`` runs the server with another environment's Python (e.g. a fresh ``pip install -e ".[web]"``,
which has no Playwright).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", default=str(HERE / "web_page.jpg"))
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--exports", default="web-exports", help="where the page exports (default: %(default)s)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scans"
        data.mkdir()
        (data / "LUNG1-001.nii.gz").symlink_to(Path(args.data) / "dev" / "NSCLCRadiomics_LUNG1-001_CT.nii.gz")
        cmd = [args.server_python, "-m", "FusionLungSegLib", "web", "--data", str(data), "--out", args.exports]
        server = subprocess.Popen([*cmd, "--port", str(args.port), "--open", "LUNG1-001"])
        try:
            url = f"http://127.0.0.1:{args.port}/"
            for _ in range(300):
                try:
                    urllib.request.urlopen(url, timeout=5)
                    break
                except OSError:
                    time.sleep(1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1500, "height": 950})
                page.goto(url)
                page.wait_for_selector(".flung-status:has-text('ready to segment')", timeout=120_000)
                page.click(".flung-segment")
                page.wait_for_selector(".flung-qc >> visible=true", timeout=900_000)
                time.sleep(4)  # the 3D surfaces
                png = Path(tmp) / "page.png"
                page.screenshot(path=str(png))
                print(page.inner_text(".flung-status"))
                print(page.inner_text(".flung-volumes"))
                page.click(".flung-export")
                page.wait_for_selector(".flung-status:has-text('export 1:')", timeout=120_000)
                print("\n".join(e.inner_text() for e in page.query_selector_all(".flung-exported")))
                browser.close()
            import cv2

            cv2.imwrite(args.out, cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 82])
            print(args.out)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
