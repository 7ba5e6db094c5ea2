"""`hubtool push DIR REPO_ID [--create-pr]`: upload a folder to a Hub repo or branch (or open a PR); re-run to resume."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a folder to a Hub repo (creates repo and branch; skips unchanged files)")
    p.add_argument("dir", type=Path, help="folder to upload")
    p.add_argument("repo_id", help="NAMESPACE/NAME")
    p.add_argument("--branch", help="branch to push to (created from main if missing); default main")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--revision-message", dest="message", help="commit message")
    p.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co); e.g. a `hubtool hub serve` URL")
    p.add_argument("--repo-type", default="model", choices=["model", "dataset", "space"])
    p.add_argument("--delete-missing", action="store_true", help="delete remote files that are not in DIR")
    p.add_argument("--create-pr", action="store_true",
                   help="change an existing repo/branch through one pull request (prints its URL) instead of committing; "
                        "a repo or branch that does not exist yet is created directly")
    p.add_argument("--follow-symlinks", action="store_true", help="upload the targets of symlinks that lead outside DIR (refused by default)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hubtool import progress
    from hubtool.push import push_folder

    progress.set_quiet(args.json)
    result = push_folder(
        args.dir,
        args.repo_id,
        branch=args.branch,
        private=args.private,
        message=args.message,
        endpoint=args.endpoint,
        repo_type=args.repo_type,
        delete_missing=args.delete_missing,
        create_pr=args.create_pr,
        follow_symlinks=args.follow_symlinks,
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.pr_url:
        print(f"opened pull request #{result.pr_num} on {result.repo_url} @ {result.branch}: "
              f"{result.files_uploaded} file(s) changed, {result.files_deleted} deleted")
        print(f"pull request {result.pr_url}")
    elif result.changed:
        print(f"pushed {result.files_uploaded} file(s), deleted {result.files_deleted} to {result.repo_url} @ {result.branch}")
        print(f"commit {result.commit_url}")
    else:
        print(f"nothing changed: {result.repo_url} @ {result.branch} already matches {args.dir} (commit {result.commit_sha})")
    return 0
