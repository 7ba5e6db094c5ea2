"""The local Hub's HTML pages at the Hub's web paths: card rendered, metadata, files, refs, commits; card text escaped."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

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
