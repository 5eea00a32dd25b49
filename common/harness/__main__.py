"""Command line of the harness (the Makefile's targets call these).

    python -m common.harness run svarm [--profile full] [--param seed=3 ...]
    python -m common.harness all [--profile ci] [--papers "svarm umap"] [--jobs 2] [--force] [--backend ray]
    python -m common.harness bless svarm [--seeds 5] [--allow-breaking-previous "reason"]
    python -m common.harness goldens-check svarm [umap ...] | --all
    python -m common.harness scoreboard [--check]
    python -m common.harness cite svarm
    python -m common.harness new <slug>
    python -m common.harness list
    python -m common.harness rehash --base <commit> --allow <files> --reason "..." [--dry-run] [--force]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import parameters, spec


def _run(slugs: list[str], profile: str, params: dict, progress: bool, papers_root=None, results_root=None) -> int:
    from . import runner, scoreboard

    failures, usage_errors = [], 0
    for slug in slugs:
        try:
            report = runner.run_paper(slug, profile, params, progress=progress, papers_root=papers_root,
                                      results_root=results_root)
        except (spec.UnknownPaperError, spec.PaperSpecError, parameters.ParameterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures.append(slug)
            usage_errors += 1
            continue
        print(report.summary(), flush=True)
        if not report.ok:
            failures.append(slug)
    ran = usage_errors < len(slugs)
    written = scoreboard.write() if ran and papers_root is None and results_root is None else []
    if written:
        print("scoreboard updated: " + ", ".join(str(p.relative_to(spec.REPO_ROOT)) for p in written))
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 2 if usage_errors == len(slugs) else 1
    return 0


def _all(args) -> int:
    from . import orchestrate, scoreboard

    implemented = spec.list_papers(args.papers_root)
    slugs = args.papers.split() or implemented
    unknown = [s for s in slugs if s not in implemented]
    if unknown:
        print(f"error: not implemented papers: {', '.join(unknown)} (`python -m common.harness list`)", file=sys.stderr)
        return 2
    rows = orchestrate.run_all(slugs, args.profile, jobs=args.jobs, backend=args.backend, force=args.force,
                               progress=not args.no_progress, ray_address=args.ray_address or None,
                               papers_root=args.papers_root, results_root=args.results_root,
                               failed_root=args.results_root.parent / "failed" if args.results_root else None)
    print(orchestrate.summary_table(rows))
    if args.papers_root is None and args.results_root is None and any(r["status"] != "up to date" for r in rows):
        written = scoreboard.write()
        print("scoreboard updated: " + ", ".join(str(p.relative_to(spec.REPO_ROOT)) for p in written))
    failed = [r["paper"] for r in rows if r["status"] == "FAILED"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _goldens_check(args) -> int:
    """Every stored earlier-machine value of the named papers' goldens against their current entries."""
    from . import goldens
    from .io import read_json

    implemented = spec.list_papers(args.papers_root)
    if args.all == bool(args.papers):
        print("error: name papers or give --all", file=sys.stderr)
        return 2
    slugs = implemented if args.all else args.papers
    unknown = [s for s in slugs if s not in implemented]
    if unknown:
        print(f"error: not implemented papers: {', '.join(unknown)} (`python -m common.harness list`)", file=sys.stderr)
        return 2
    failed, total = [], 0
    for slug in slugs:
        path = spec.paper_dir(slug, args.papers_root) / "expected" / "ci.json"
        if not path.is_file():
            print(f"{slug}: no expected/ci.json (nothing to check)")
            continue
        golden = read_json(path)
        failures, checked = goldens.check_file(golden)
        total += checked
        machines = [goldens.machine_label(goldens.machine_key(b)) for b in golden.get(goldens.PREVIOUS) or []]
        if failures:
            failed.append(slug)
            print(f"{slug}: {len(failures)} of {checked} earlier value(s) fail the current goldens:")
            for failure in failures:
                print(f"  {failure}")
        elif machines:
            print(f"{slug}: ok, {checked} value(s) from {', '.join(machines)}")
        elif not args.all:
            print(f"{slug}: no earlier blessings stored (nothing to check)")
    print(f"{total} earlier value(s) checked in {len(slugs)} paper(s); " +
          (f"FAILED: {', '.join(failed)}" if failed else "all pass"))
    return 1 if failed else 0


def _slug_problem(slug: str, papers_root: Path | None) -> str | None:
    """Why ``slug`` cannot name a paper (checked before anything runs), or None."""
    if not spec.SLUG_RE.match(slug):
        return (f"{slug!r} is not a paper slug: lowercase letters, digits and underscores, starting with a letter, "
                "as in papers/catalog.yaml (e.g. svarm)")
    if papers_root is None:
        from .scaffold import catalog_slugs

        if slug not in catalog_slugs():
            return f"unknown paper {slug!r}: not in papers/catalog.yaml (`python -m common.harness list` lists the implemented ones)"
    return None


def _stop_children() -> None:
    """SIGKILL every process this one started (the notebook kernels and theirs): an interrupted run is
    discarded, and a kernel shut down gracefully while a cell still runs prints a ZMQ traceback (an
    ipykernel race: the reply goes to a socket the shutdown has closed)."""
    try:
        import psutil  # a dependency of IPython, hence always installed with the kernel
    except ImportError:
        return
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)


def _on_interrupt(signum, frame) -> None:
    _stop_children()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one paper's notebooks")
    run.add_argument("paper")
    run.add_argument("--profile", default="ci", choices=spec.PROFILES)
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--params", default="", help="space-separated NAME=VALUE pairs (make's PARAMS)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--papers-root", type=Path, default=None, help=argparse.SUPPRESS)
    run.add_argument("--results-root", type=Path, default=None, help=argparse.SUPPRESS)
    every = sub.add_parser("all", help="run every paper whose results are not up to date")
    every.add_argument("--profile", default="ci", choices=spec.PROFILES)
    every.add_argument("--papers", default="", help="space-separated slugs (make's PAPERS); default: every paper")
    every.add_argument("--jobs", type=int, default=1, help="worker processes (make's JOBS), each single-threaded")
    every.add_argument("--force", action="store_true", help="re-run papers whose results are up to date (FORCE=1)")
    every.add_argument("--backend", default="local", choices=("local", "ray"))
    every.add_argument("--ray-address", default=None, help="a running Ray cluster (RAY_ADDRESS); default: a local one")
    every.add_argument("--no-progress", action="store_true")
    every.add_argument("--papers-root", type=Path, default=None, help=argparse.SUPPRESS)
    every.add_argument("--results-root", type=Path, default=None, help=argparse.SUPPRESS)
    bless = sub.add_parser("bless", help="rewrite a paper's goldens from fresh runs")
    bless.add_argument("paper")
    bless.add_argument("--seeds", type=int, default=5)
    bless.add_argument("--allow-breaking-previous", default=None, metavar="REASON",
                       help="write goldens that reject values an earlier blessing with the same code and inputs "
                            "gave (another CPU, or nondeterminism); the reason is recorded in the goldens' provenance")
    check = sub.add_parser("goldens-check", help="check the values earlier machines gave against the current goldens "
                                                 "(no runs)")
    check.add_argument("papers", nargs="*", metavar="paper")
    check.add_argument("--all", action="store_true", help="every implemented paper")
    check.add_argument("--papers-root", type=Path, default=None, help=argparse.SUPPRESS)
    board = sub.add_parser("scoreboard", help="regenerate results/README.md, index.json and generated sections")
    board.add_argument("--check", action="store_true", help="fail if a generated section is out of date")
    cite = sub.add_parser("cite", help="BibTeX for a paper and a citation line for our artifact")
    cite.add_argument("paper")
    new = sub.add_parser("new", help="scaffold papers/<slug>/")
    new.add_argument("paper")
    sub.add_parser("list", help="list implemented papers")
    again = sub.add_parser("rehash", help="carry current results across a change that alters no computed value "
                                          "(see common/harness/rehash.py)")
    again.add_argument("--base", required=True, help="the commit at which the results were current")
    again.add_argument("--allow", nargs="+", required=True, metavar="PATH",
                       help="files changed since --base that do not change any computed value")
    again.add_argument("--reason", required=True, help="why they do not (stored in each provenance.json)")
    again.add_argument("--dry-run", action="store_true", help="say what would be rehashed, write nothing")
    again.add_argument("--force", action="store_true",
                       help="accept declared files whose code changed or that cannot be checked (named in the stamp)")
    args = parser.parse_args(argv)
    if getattr(args, "paper", None) is not None:
        problem = _slug_problem(args.paper, getattr(args, "papers_root", None))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2

    try:
        if args.command == "run":
            params = parameters.parse_assignments(args.params) | parameters.parse_assignments(args.param)
            return _run([args.paper], args.profile, params, not args.no_progress, args.papers_root, args.results_root)
        if args.command == "all":
            return _all(args)
        if args.command == "bless":
            from .bless import bless as do_bless
            from .goldens import BreaksEarlierBlessingsError
            from .scoreboard import write

            reason = args.allow_breaking_previous
            if reason is not None and not reason.strip():
                print("error: --allow-breaking-previous needs a reason (it is recorded in the goldens' provenance)",
                      file=sys.stderr)
                return 2
            try:
                target = do_bless(args.paper, args.seeds, allow_breaking_previous=reason)
            except BreaksEarlierBlessingsError as exc:
                print(f"error: {args.paper}: {exc}\n"
                      f"papers/{args.paper}/expected/ci.json is unchanged (results/{args.paper}/ci/ holds the new "
                      "canonical run, not current for any goldens). These values were blessed with the same code "
                      "and inputs: find out why they moved (another CPU's kernels, or nondeterminism on this one). "
                      "If the new goldens are right anyway, bless again with\n"
                      f"  python -m common.harness bless {args.paper} --allow-breaking-previous \"<reason>\"\n"
                      "(the reason and the broken metrics go into the goldens' provenance; the earlier values of "
                      "those metrics are not carried forward)", file=sys.stderr)
                return 1
            write()
            print(f"goldens written to {target.relative_to(spec.REPO_ROOT)}; review the diff and commit it")
            return 0
        if args.command == "goldens-check":
            return _goldens_check(args)
        if args.command == "scoreboard":
            from . import scoreboard

            if args.check:
                stale = [p for p, text in scoreboard.generated_files().items() if p.read_text() != text]
                for path in stale:
                    print(f"out of date: {path.relative_to(spec.REPO_ROOT)} (run `make scoreboard`)", file=sys.stderr)
                return 1 if stale else 0
            for path in scoreboard.write():
                print(f"wrote {path.relative_to(spec.REPO_ROOT)}")
            return 0
        if args.command == "cite":
            from .cite import cite as do_cite

            print(do_cite(args.paper))
            return 0
        if args.command == "new":
            from .scaffold import scaffold

            root = scaffold(args.paper)
            print(f"created {root.relative_to(spec.REPO_ROOT)}; next: `make bless PAPER={args.paper}` "
                  "(see CONTRIBUTING.md)")
            return 0
        if args.command == "list":
            print("\n".join(spec.list_papers()))
            return 0
        if args.command == "rehash":
            from .rehash import main as do_rehash

            return do_rehash(args.base, args.allow, args.reason, args.dry_run, args.force)
    except (spec.UnknownPaperError, spec.PaperSpecError, parameters.ParameterError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: previous results are untouched", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    # Ctrl-C and `kill -INT` interrupt a run even when the parent shell ignored SIGINT (`nohup make run &`
    # hands SIG_IGN down to a background job); the handler stops the kernels first (see _stop_children).
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a second Ctrl-C during the clean-up
        print("interrupted", file=sys.stderr)
        sys.exit(130)
