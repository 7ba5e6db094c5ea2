"""The local Hub's HTML pages at the Hub's web paths: card rendered, metadata, files, refs, commits; card text escaped."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cardkit import RELEASE, RESULTS, gguf_dir

HOSTILE_BODY = """
# Tiny card

<script>document.title = 'pwned'</script>

<img src=x onerror="alert(1)">

[click](javascript:alert(1))

| a | b |
|---|---|
| 1 | 2 |

```python
print("<b>not bold</b>")
```
"""


def get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode("utf-8")


@pytest.fixture
def repo(local_hub, tmp_path):
    from huggingface_hub import HfApi

    from hubtool.card import render_card

    folder = gguf_dir(tmp_path)
    card = render_card("gguf", folder, meta={"license": "mit", "language": ["en"]}, results=RESULTS, release=RELEASE)
    (folder / "README.md").write_text(card + HOSTILE_BODY, encoding="utf-8")
    api = HfApi(endpoint=local_hub.url, token="hf_local")
    api.create_repo("acme/bagel-8k-GGUF")
    api.upload_folder(folder_path=str(folder), repo_id="acme/bagel-8k-GGUF", commit_message="first upload")
    api.create_branch("acme/bagel-8k-GGUF", branch="dev")
    api.create_tag("acme/bagel-8k-GGUF", tag="v1.0")
    return local_hub.url, "acme/bagel-8k-GGUF"


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_repo_page_shows_card_metadata_files_refs(repo):
    url, repo_id = repo
    status, headers, page = get(f"{url}/{repo_id}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers["Content-Security-Policy"]
    # front matter is metadata, not text
    assert "license: mit" in page and "<span data-key='license'>" in page
    assert "base_model_relation:" not in page.split("<article")[1]
    assert "---" not in page.split("<article")[1][:200]
    # the card body: markdown rendered (heading, tables, code)
    assert re.search(r"<h1>GGUF", page) or "<h1>" in page.split("<article")[1]
    assert "<table>" in page.split("<article")[1] and "<td>1</td>" in page
    assert '<code class="language-python">' in page and "&lt;b&gt;not bold&lt;/b&gt;" in page
    # the quality numbers from model-index and the card's own table
    assert "id='eval-results'" in page and "10.05" in page and "Perplexity (Q4_K_M)" in page
    # files with sizes and storage marks, branches and tags
    files = page.split("id='files'")[1].split("</table>")[0]
    assert "bagel-8k.Q4_K_M.gguf" in files and "data-bytes='1000'" in files and "LFS" in files
    assert "/acme/bagel-8k-GGUF/tree/dev" in page and "v1.0" in page.split("id='tags'")[1][:400]


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_card_html_is_escaped(repo):
    url, repo_id = repo
    _, _, page = get(f"{url}/{repo_id}")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img" not in page and "onerror=\"alert" not in page
    assert 'href="javascript:' not in page


@pytest.mark.parametrize("hub_mode", ["xet"], indirect=True)
def test_tree_blob_commits_and_index(repo):
    url, repo_id = repo
    status, _, page = get(f"{url}/{repo_id}/tree/dev")
    assert status == 200 and "revision dev" in page and "bagel-8k.Q8_0.gguf" in page and "Xet" in page
    status, _, blob = get(f"{url}/{repo_id}/blob/main/README.md")
    assert status == 200 and "&lt;script&gt;" in blob and "<script>" not in blob and "/resolve/main/README.md" in blob
    status, _, commits = get(f"{url}/{repo_id}/commits/main")
    assert status == 200 and "first upload" in commits
    status, _, index = get(f"{url}/")
    assert status == 200 and f"href='/{repo_id}'" in index
    status, headers, missing = get(f"{url}/acme/nope")
    assert status == 404 and headers["Content-Type"].startswith("text/html") and "not found" in missing.lower()
    status, _, _ = get(f"{url}/{repo_id}/blob/main/nope.txt")
    assert status == 404
    # the API paths are untouched
    status, headers, api = get(f"{url}/api/models/{repo_id}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")


# ---- in a real browser (headless Chromium from Debian; scripts/setup.sh installs it) ----------------------

def chromium() -> str:
    import shutil

    from tests.extras import in_ci

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if in_ci():
            pytest.fail("CI=true and chromium is missing; scripts/setup.sh installs it (apt-get install chromium)", pytrace=False)
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def browse(url: str, tmp_path, *args: str) -> str:
    import subprocess

    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1600", *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("hub_mode", ["lfs"], indirect=True)
def test_fp16_repo_page_in_chromium(local_hub, tmp_path):
    from huggingface_hub import HfApi

    from hubtool.card import render_card
    from tests.cardkit import merged_dir

    folder = merged_dir(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\0" * 300_000)
    card = render_card("merged", folder, meta={"license": "apache-2.0", "base_model": "huggyllama/llama-65b"},
                       results=RESULTS, release={**RELEASE, "hub_url": "/"})
    (folder / "README.md").write_text(card.replace("<!-- generated by hubtool card -->", "<!-- generated by hubtool card -->\n<script>document.title='pwned'</script>", 1), encoding="utf-8")
    api = HfApi(endpoint=local_hub.url, token="hf_local")
    repo_id = RELEASE["repos"]["fp16"]
    api.create_repo(repo_id)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    page = f"{local_hub.url}/{repo_id}"

    shot = Path(os.environ.get("HUBTOOL_SCREENSHOT_DIR") or tmp_path) / "fp16.png"
    browse(page, tmp_path, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real rendering, not a blank page
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)

    dom = browse(page, tmp_path, "--dump-dom")  # the DOM after the browser parsed (and would have run) the page
    assert f"<title>{repo_id} · local Hub</title>" in dom  # no script from the card changed it
    assert "pwned" not in dom.split("</title>")[0]
    article = dom.split("<article")[1]
    assert "<h1>bagel-8k</h1>" in article  # the card's title, rendered as a heading
    assert "generated by hubtool card" not in article  # HTML comments are hidden, as on the Hub
    assert "license: apache-2.0" in dom
    files = dom.split('id="files"')[1].split("</table>")[0]
    assert "model.safetensors" in files and "300.0 kB" in files and "LFS" in files and "config.json" in files
    assert 'href="/acme/bagel-8k-GGUF"' in dom  # the card links to the repos on this Hub
