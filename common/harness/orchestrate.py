"""``make all``: which papers to run, where to run them, and one summary at the end.

Three decisions, each on an existing tool rather than a scheduler of our own:

- **Incremental.** A paper/profile is *up to date* when its committed results were made by a canonical
  run of the same code (:func:`provenance.code_hash`: the paper's files, the parts of ``common/`` it
  imports, the locks) and zoo checkpoints (:func:`provenance.stale_reason`), the same effective parameters
  (:func:`provenance.input_hash`) and, for ci, the same goldens. Up-to-date papers are skipped with one line each; ``force=True`` re-runs them.
- **Local parallelism** (``jobs > 1``): papers run in worker processes (:mod:`concurrent.futures`, spawn),
  each single-threaded as in a sequential run. A worker runs the notebooks into a scratch folder and
  hands back an archive; the driver alone writes ``results/`` (staged, then renamed), so a killed
  worker or an interrupted run leaves the previous results intact.
- **Ray** (``backend="ray"``): the same worker function as a Ray task, with the resources the paper
  declares (``resources: {full: {gpus: 1, memory_gb: 16, minutes: 30}}`` in ``paper.yaml``) and
  retries when a worker or its node dies. Connects to ``RAY_ADDRESS`` when given (a cluster started
  with Ray's own launchers, see CONTRIBUTING.md), otherwise starts a local cluster.

With ``jobs == 1`` and the local backend, papers run in this process exactly as ``make run`` does.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import goldens, parameters, provenance, runner, spec
from .io import make_temp_dir, read_json

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Freshness:
    current: bool
    reason: str


def freshness(slug: str, profile: str, *, results_root: Path | None = None,
              papers_root: Path | None = None) -> Freshness:
    """Whether ``results/<slug>/<profile>/`` is what a canonical run of the current tree would write."""
    paper, _, effective = runner.prepare(slug, profile, {}, papers_root)
    folder = Path(results_root or runner.RESULTS_ROOT) / slug / profile
    prov_file = folder / "provenance.json"
    if not prov_file.is_file() or not (folder / "claims.json").is_file() or not (folder / "metrics.json").is_file():
        return Freshness(False, "no results yet")
    try:
        prov = read_json(prov_file)
    except ValueError:
        return Freshness(False, "unreadable provenance.json")
    reason = provenance.stale_reason(prov, paper)
    if reason:
        return Freshness(False, reason)
    code = prov["code_hash"]
    params_key = {paper.notebook_key(nb): p for nb, p in effective.items()}
    if prov.get("input_hash") != provenance.input_hash(code, params_key):
        return Freshness(False, "parameters changed")
    if not prov.get("canonical", False):
        return Freshness(False, "not a canonical run")
    if profile == "ci" and prov.get("goldens_hash") != goldens.file_hash(paper.root / "expected" / "ci.json"):
        return Freshness(False, "goldens changed since the run")
    return Freshness(True, "up to date")


@dataclass
class Outcome:
    """What a worker hands back for one paper/profile (picklable, small apart from the archive)."""

    slug: str
    profile: str
    ok: bool
    summary: str
    seconds: float
    counts: dict = field(default_factory=dict)  # claims by status
    archive: bytes = b""  # tar.gz of the run folder (results when ok, the failed run otherwise)
    attempt_host: str = ""


def _pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def _unpack(blob: bytes, target: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(target, filter="data")


def execute(slug: str, profile: str, papers_root: str | None = None) -> Outcome:
    """Run one paper/profile into a scratch folder and return its artifacts (the worker's side).

    Single-threaded like a sequential run (``OMP_NUM_THREADS`` etc. default to 1 in the kernels).
    """
    import platform

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"repro-{slug}-") as scratch:
        scratch = Path(scratch)
        report = runner.run_paper(slug, profile, papers_root=Path(papers_root) if papers_root else None,
                                  destination=scratch / "out", failed_root=scratch / "failed",
                                  progress=False)
        folder = scratch / "out" if report.ok else scratch / "failed" / slug / profile
        archive = _pack(folder) if folder.is_dir() else b""
    return Outcome(slug, profile, report.ok, report.summary(), time.perf_counter() - start,
                   status_counts(report.claims), archive, platform.node())


def status_counts(claims: list) -> dict:
    """Claims by status, e.g. ``{"reproduced": 3, "inconclusive": 1}`` (all kinds together)."""
    found: dict[str, int] = {}
    for claim in claims:
        found[claim.status] = found.get(claim.status, 0) + 1
    return found


def install(outcome: Outcome, *, results_root: Path | None = None, failed_root: Path | None = None) -> Path | None:
    """The driver's side: put a worker's artifacts in place, atomically (staged, then renamed)."""
    if not outcome.archive:
        return None
    root = Path(results_root or runner.RESULTS_ROOT) if outcome.ok else Path(failed_root or runner.FAILED_ROOT)
    destination = root / outcome.slug / outcome.profile
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(f".{destination.name}.tmp-", destination.parent)
    try:
        _unpack(outcome.archive, staging)
        if outcome.ok:
            runner._replace(staging, destination)
        else:
            shutil.rmtree(destination, ignore_errors=True)
            os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def resources(paper: spec.PaperSpec, profile: str) -> dict:
    """The resources ``paper.yaml`` declares for ``profile`` (defaults: 1 CPU, no GPU)."""
    declared = dict((paper.resources or {}).get(profile) or {})
    return {"cpus": declared.get("cpus", 1), "gpus": declared.get("gpus", 0),
            "memory_gb": declared.get("memory_gb"), "minutes": declared.get("minutes")}


# ---------------------------------------------------------------------------------------------- backends

def _run_local_pool(tasks: list[tuple[str, str]], jobs: int, on_done, papers_root: str | None) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch/fork state shared
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(execute, slug, profile, papers_root): (slug, profile) for slug, profile in tasks}
        try:
            for future in cf.as_completed(futures):
                slug, profile = futures[future]
                try:
                    on_done(future.result())
                except cf.process.BrokenProcessPool as exc:
                    on_done(Outcome(slug, profile, False, f"== {slug} [{profile}]: FAILED\n   worker died: {exc}", 0.0))
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _run_ray(tasks: list[tuple[str, str]], on_done, papers_root: str | None, address: str | None,
             max_retries: int = 3, num_cpus: int | None = None) -> None:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("BACKEND=ray needs Ray: pip install -e '.[cluster]' (pinned by requirements.lock)") from exc
    started_here = not ray.is_initialized()
    if started_here:
        repo = str(spec.REPO_ROOT)
        if address:
            # a remote cluster: ship the tree (not the environment, results or caches) to every node
            runtime_env = {"working_dir": repo, "excludes": [".venv", "results", ".cache", "runs", ".git", "*.ipynb_checkpoints"]}
        else:
            runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}}
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, runtime_env=runtime_env)
    try:
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        remote = ray.remote(execute)
        pending = {}
        for slug, profile in tasks:
            need = resources(spec.load(slug, Path(papers_root) if papers_root else None), profile)
            gpus = need["gpus"] if has_gpu else 0
            if need["gpus"] and not has_gpu:
                print(f"note: {slug} [{profile}] declares {need['gpus']} GPU(s); the cluster has none: runs on CPU",
                      file=sys.stderr)
            options = {"num_cpus": need["cpus"], "num_gpus": gpus, "max_retries": max_retries,
                       "retry_exceptions": False}
            if need["memory_gb"]:
                options["memory"] = int(need["memory_gb"] * 1024**3)
            pending[remote.options(**options).remote(slug, profile, papers_root)] = (slug, profile)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            slug, profile = pending.pop(done[0])
            try:
                on_done(ray.get(done[0]))
            except ray.exceptions.RayError as exc:  # retries exhausted, or the task raised
                on_done(Outcome(slug, profile, False, f"== {slug} [{profile}]: FAILED\n   ray: {exc}", 0.0))
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------- driver

def run_all(slugs: list[str], profile: str, *, jobs: int = 1, backend: str = "local", force: bool = False,
            progress: bool = True, ray_address: str | None = None, papers_root: Path | None = None,
            results_root: Path | None = None, failed_root: Path | None = None, ray_cpus: int | None = None) -> list:
    """Run the papers that are not up to date; returns the summary rows (also printed)."""
    from tqdm.auto import tqdm

    if backend not in BACKENDS:
        raise parameters.ParameterError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if jobs < 1:
        raise parameters.ParameterError(f"JOBS must be a positive integer, got {jobs}")
    rows, tasks = [], []
    for slug in slugs:
        state = freshness(slug, profile, results_root=results_root, papers_root=papers_root)
        if state.current and not force:
            print(f"{slug} [{profile}]: up to date, skipped", flush=True)
            rows.append({"paper": slug, "profile": profile, "status": "up to date", "seconds": None, "counts": {}})
        else:
            print(f"{slug} [{profile}]: {'forced' if state.current else state.reason}: will run", flush=True)
            tasks.append((slug, profile))
    if not tasks:
        return rows
    bar = tqdm(total=len(tasks), desc=f"make all [{profile}]", unit="paper", disable=not progress)
    t0 = time.perf_counter()

    def on_done(outcome: Outcome) -> None:
        install(outcome, results_root=results_root, failed_root=failed_root)
        tqdm.write(outcome.summary)
        rows.append({"paper": outcome.slug, "profile": outcome.profile, "status": "OK" if outcome.ok else "FAILED",
                     "seconds": round(outcome.seconds, 1), "counts": outcome.counts})
        bar.update(1)

    root = str(papers_root) if papers_root else None
    try:
        if backend == "ray":
            _run_ray(tasks, on_done, root, ray_address, num_cpus=ray_cpus or jobs)
        elif jobs == 1:
            for slug, profile in tasks:
                report = runner.run_paper(slug, profile, papers_root=papers_root, results_root=results_root,
                                          failed_root=failed_root, progress=progress)
                tqdm.write(report.summary())
                rows.append({"paper": slug, "profile": profile, "status": "OK" if report.ok else "FAILED",
                             "seconds": round(sum(n.duration_s for n in report.notebooks), 1),
                             "counts": status_counts(report.claims)})
                bar.update(1)
        else:
            _run_local_pool(tasks, jobs, on_done, root)
    finally:
        bar.close()
    rows.append({"paper": "(wall time)", "profile": profile, "status": f"{len(tasks)} run, jobs={jobs}, {backend}",
                 "seconds": round(time.perf_counter() - t0, 1), "counts": {}})
    return rows


def summary_table(rows: list[dict]) -> str:
    """Paper, profile, status, wall time and claims by status, as an aligned text table."""
    header = ("paper", "profile", "status", "seconds", "claims")
    lines = [header]
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()) if v)
        lines.append((r["paper"], r["profile"], r["status"], "" if r["seconds"] is None else f"{r['seconds']:.1f}", counts))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
