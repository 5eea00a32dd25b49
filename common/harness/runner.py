"""Executing a paper's notebooks with papermill and writing its results.

``run_paper`` is what ``make run``, ``make all`` and the notebook tests call:

1. load and validate ``paper.yaml``; read every notebook's ``parameters`` cell and
   validate the profile's and the user's overrides against it (unknown names and
   wrong types are errors);
2. execute each notebook (kernel ``python3``, cwd = the notebook's folder, per-cell
   timeout, network blocked) into a temporary folder next to the destination; one
   failing notebook does not stop the others;
3. evaluate the claims that must hold at this profile and, for a canonical ci run,
   compare with the goldens in ``expected/ci.json``;
4. only if everything passed, replace ``results/<slug>/<profile>/`` by the temporary
   folder (rename), so a failed or interrupted run never touches the last good
   artifacts. Failed runs are kept under ``.cache/failed/`` for inspection.

Runs with user parameters (``PARAMS=...``) are not canonical: they go to
``runs/<slug>/<profile>-<hash>/`` (git-ignored) and skip the goldens.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import claims as claims_mod
from . import context, expressions, goldens, netguard, parameters, provenance, spec
from .io import atomic_write_json, make_temp_dir, read_json

RESULTS_ROOT = spec.REPO_ROOT / "results"
RUNS_ROOT = spec.REPO_ROOT / "runs"
FAILED_ROOT = spec.REPO_ROOT / ".cache" / "failed"


@dataclass
class NotebookOutcome:
    notebook: str
    ok: bool
    duration_s: float
    error: str = ""
    output_path: str = ""


@dataclass
class RunReport:
    slug: str
    profile: str
    destination: Path | None
    notebooks: list[NotebookOutcome] = field(default_factory=list)
    claims: list = field(default_factory=list)
    golden_problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.errors and all(n.ok for n in self.notebooks) and not self.golden_problems
                and not any(c.must_hold_but_failed for c in self.claims))

    def summary(self) -> str:
        lines = [f"== {self.slug} [{self.profile}]: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"   error: {e}" for e in self.errors]
        for n in self.notebooks:
            state = "ok" if n.ok else "FAILED"
            lines.append(f"   {n.notebook}: {state} in {n.duration_s:.1f} s")
            if not n.ok:
                lines += ["      " + line for line in n.error.splitlines()]
        for c in self.claims:
            note = f" ({c.message})" if c.message and c.status != "not_reproduced" else ""
            lines.append(f"   claim {c.id}: {c.status} [{c.kind}]{note}")
        lines += [f"   golden: {p}" for p in self.golden_problems]
        if self.destination is not None:
            lines.append(f"   {'results in' if self.ok else 'previous results kept in'} {self.destination}")
        return "\n".join(lines)


def _ipython_dir(root: Path) -> Path:
    """An IPython profile whose startup file blocks the network in the kernel."""
    startup = root / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-offline.py").write_text(netguard.STARTUP_SOURCE)
    # ipykernel warns on every start that loopback TCP is unencrypted; it is noise here
    (root / "profile_default" / "ipython_kernel_config.py").write_text("c.IPKernelApp.log_level = 'ERROR'\n")
    return root


def _source_cell_index(executed: Path, index: int) -> int:
    """Index in the source notebook: papermill inserts an injected-parameters cell."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except Exception:  # noqa: BLE001
        return index
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])]
    return index - 1 if injected and injected[0] < index else index


def _describe_failure(exc: BaseException, slug: str, notebook: str, output: Path, output_written: Path) -> str:
    import papermill

    kind = type(exc).__name__
    if isinstance(exc, papermill.PapermillExecutionError):
        where = f"cell {_source_cell_index(output_written, exc.cell_index)} of {notebook} (0-based, execution count {exc.exec_count})"
        text = f"{slug}/{notebook}: {where} raised {exc.ename}: {exc.evalue}"
    elif "DeadKernel" in kind or "died" in str(exc).lower():
        text = f"{slug}/{notebook}: the kernel died (likely out of memory): {exc}"
    elif "Timeout" in kind:
        text = f"{slug}/{notebook}: a cell exceeded the per-cell timeout: {exc}"
    else:
        text = f"{slug}/{notebook}: {kind}: {exc}"
    return f"{text}\nfailed notebook: {output}"


def _cell_durations(path: Path) -> list:
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - a missing output notebook has no durations
        return []
    return [round(float(c.metadata.get("papermill", {}).get("duration") or 0.0), 3)
            for c in nb.cells if c.cell_type == "code"]


def prepare(slug: str, profile: str, user_params: dict | None, papers_root: Path | None = None,
            per_notebook: dict | None = None):
    """Load the paper and resolve every notebook's effective overrides (raises on errors).

    ``per_notebook`` maps a notebook key to overrides for that notebook alone (used by bless).
    """
    if profile not in spec.PROFILES:
        raise parameters.ParameterError(f"unknown profile {profile!r}; profiles: {', '.join(spec.PROFILES)}")
    paper = spec.load(slug, papers_root)
    declared = {}
    for notebook in paper.notebooks:
        path = paper.notebook_path(notebook)
        if not path.is_file():
            raise spec.PaperSpecError(f"{paper.yaml_path}: notebook {notebook} is listed but {path} does not exist")
        declared[notebook] = parameters.declared_parameters(path)
    overrides = {nb: paper.overrides(profile, nb) for nb in paper.notebooks}
    effective = parameters.resolve(declared, overrides, user_params or {})
    for notebook in paper.notebooks:
        for name, value in ((per_notebook or {}).get(paper.notebook_key(notebook)) or {}).items():
            if name not in declared[notebook]:
                raise parameters.ParameterError(f"{notebook}: unknown parameter {name!r}")
            effective[notebook][name] = parameters.check_value(notebook, name, value, declared[notebook][name])
    return paper, declared, effective


def run_paper(
    slug: str,
    profile: str = "ci",
    user_params: dict | None = None,
    *,
    papers_root: Path | None = None,
    results_root: Path | None = None,
    runs_root: Path | None = None,
    failed_root: Path | None = None,
    check_goldens: bool = True,
    check_claims: bool = True,
    progress: bool = True,
    destination: Path | None = None,
    per_notebook: dict | None = None,
    env: dict | None = None,
) -> RunReport:
    """Run every notebook of ``slug`` at ``profile``; see the module docstring.

    ``env`` sets environment variables of the kernels for this run only (``make bless`` uses it to
    re-run the canonical seed under other numeric kernels, see :data:`goldens.KERNEL_VARIANTS`).
    """
    import papermill
    from tqdm.auto import tqdm

    user_params = dict(user_params or {})
    paper, declared, effective = prepare(slug, profile, user_params, papers_root, per_notebook)
    files_hash = provenance.code_hash(paper)
    params_key = {paper.notebook_key(nb): p for nb, p in effective.items()}
    input_hash = provenance.input_hash(files_hash, params_key)
    canonical = not user_params and not per_notebook
    if destination is None:
        if canonical:
            destination = Path(results_root or RESULTS_ROOT) / slug / profile
        else:
            destination = Path(runs_root or RUNS_ROOT) / slug / f"{profile}-{input_hash[:10]}"
    report = RunReport(slug, profile, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(f".{destination.name}.tmp-", destination.parent)
    moved = False
    started, t0 = provenance.now(), time.perf_counter()
    saved_env = {k: os.environ.get(k) for k in
                 (context.RUN_DIR_ENV, context.PAPER_ENV, context.PROFILE_ENV, context.NOTEBOOK_ENV,
                  context.PAPERS_ROOT_ENV, "IPYTHONDIR", "PYTHONPATH", *(env or {}))}
    per_notebook = {}
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        os.environ["IPYTHONDIR"] = str(_ipython_dir(staging / ".ipython"))
        os.environ[context.PAPER_ENV] = slug
        os.environ[context.PROFILE_ENV] = profile
        os.environ[context.PAPERS_ROOT_ENV] = str(paper.root.parent)
        # the kernels import `common` and `papers` from this checkout, never from wherever the environment's
        # editable install points (a second worktree sharing one .venv would silently run the other's code)
        roots = [str(spec.REPO_ROOT)]
        if paper.root.parent != spec.PAPERS_ROOT.resolve():
            # a paper outside papers/ (a test fixture): make `papers.<slug>` importable from its root
            roots.insert(0, str(paper.root.parent.parent))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [*roots, saved_env.get("PYTHONPATH")]))
        bar = tqdm(paper.notebooks, desc=f"{slug} [{profile}]", unit="notebook", disable=not progress)
        for notebook in bar:
            key = paper.notebook_key(notebook)
            bar.set_postfix_str(key)
            run_dir = staging / key
            run_dir.mkdir()
            os.environ[context.RUN_DIR_ENV] = str(run_dir)
            os.environ[context.NOTEBOOK_ENV] = key
            output = staging / notebook
            nb_start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(paper.notebook_path(notebook)),
                    str(output),
                    parameters=effective[notebook],
                    kernel_name="python3",
                    cwd=str(paper.notebook_path(notebook).parent),
                    execution_timeout=paper.timeout(profile),
                    progress_bar=False,
                    log_output=False,
                    report_mode=False,
                )
                outcome = NotebookOutcome(notebook, True, time.perf_counter() - nb_start, output_path=str(output))
            except Exception as exc:  # noqa: BLE001 - every failure is reported, the next notebook still runs
                failed_copy = Path(failed_root or FAILED_ROOT) / slug / profile / notebook
                outcome = NotebookOutcome(notebook, False, time.perf_counter() - nb_start,
                                          _describe_failure(exc, slug, notebook, failed_copy, output))
            report.notebooks.append(outcome)
            metrics_file = run_dir / "metrics.json"
            recorded = read_json(metrics_file) if metrics_file.is_file() else {"metrics": {}, "volatile": []}
            kernel_file = run_dir / "kernel.json"
            per_notebook[key] = {
                "metrics": recorded["metrics"],
                "volatile": recorded["volatile"],
                "log_factors": recorded.get("log_factors", {}),
                "dtypes": recorded.get("dtypes", {}),
                "duration_s": round(outcome.duration_s, 2),
                "cell_durations_s": _cell_durations(output),
                "peak_rss_mb": read_json(kernel_file).get("peak_rss_mb") if kernel_file.is_file() else None,
                # CPU seconds of the kernel process (up to its last record): the ci budget, unlike wall time,
                # does not grow when other jobs load the machine
                "cpu_s": read_json(kernel_file).get("cpu_s") if kernel_file.is_file() else None,
                "kernel": {k: v for k, v in (read_json(kernel_file) if kernel_file.is_file() else {}).items()
                           if k not in ("peak_rss_mb", "cpu_s")},
                "parameters": {**declared[notebook], **effective[notebook]},
                "overrides": effective[notebook],
            }
        finished = provenance.now()

        metrics = {k: v["metrics"] for k, v in per_notebook.items()}
        volatile = {k: v["volatile"] for k, v in per_notebook.items()}
        report.errors += duplicate_metrics(metrics)
        flat = {name: value for values in metrics.values() for name, value in values.items()}
        flat = {k: (float("nan") if v is None else v) for k, v in flat.items()}
        if all(n.ok for n in report.notebooks) and check_claims:
            try:
                report.claims = claims_mod.evaluate_claims(paper, profile, flat)
            except expressions.ExpressionError as exc:
                report.errors.append(f"{paper.yaml_path}: {exc}")
            golden_file = paper.root / "expected" / "ci.json"
            if canonical and profile == "ci" and check_goldens:
                if golden_file.is_file():
                    report.golden_problems = goldens.compare(read_json(golden_file), metrics, volatile)
                else:
                    report.golden_problems = [f"{golden_file} is missing (run `make bless PAPER={slug}`)"]

        git = provenance.git_state(paths=provenance.code_paths(paper))
        device = provenance.device()
        atomic_write_json(staging / "metrics.json", {
            "notebooks": metrics, "volatile": volatile,
            "log_factors": {k: v["log_factors"] for k, v in per_notebook.items() if v["log_factors"]},
            "dtypes": {k: v["dtypes"] for k, v in per_notebook.items() if v["dtypes"]},
        })
        atomic_write_json(staging / "claims.json", {
            "profile": profile,
            "verdict": claims_mod.verdict(report.claims) if report.claims else "pending",
            "score": claims_mod.score(report.claims),
            "counts": claims_mod.counts(report.claims),
            "claims": {c.id: c.to_json() for c in report.claims},
        })
        atomic_write_json(staging / "provenance.json", {
            "paper": slug,
            "profile": profile,
            "canonical": canonical,
            "git": git,
            "code_hash": files_hash,
            "input_hash": input_hash,
            "goldens_hash": goldens.file_hash(paper.root / "expected" / "ci.json") if profile == "ci" else None,
            "user_parameters": user_params,
            "seeds": {k: {n: v for n, v in p["parameters"].items() if "seed" in n} for k, p in per_notebook.items()},
            "versions": provenance.versions(),
            "numeric_env": provenance.numeric_env(),
            "device": device,
            "device_label": provenance.device_label(device),
            "started": started,
            "finished": finished,
            "duration_s": round(time.perf_counter() - t0, 2),
            "checkpoints": dict(sorted({name: sha for p in per_notebook.values()
                                        for name, sha in (p["kernel"].get("checkpoints") or {}).items()}.items())),
            "checkpoint_manifests": dict(sorted({name: sha for p in per_notebook.values() for name, sha
                                                 in (p["kernel"].get("checkpoint_manifests") or {}).items()}.items())),
            "notebooks": {k: {n: v for n, v in p.items() if n not in ("metrics", "volatile", "log_factors", "dtypes")}
                          for k, p in per_notebook.items()},
        })
        shutil.rmtree(staging / ".ipython", ignore_errors=True)

        if report.ok:
            _replace(staging, destination)
            moved = True
        else:
            failed_dir = Path(failed_root or FAILED_ROOT) / slug / profile
            shutil.rmtree(failed_dir, ignore_errors=True)
            failed_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staging), str(failed_dir))
            moved = True
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if not moved:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def duplicate_metrics(metrics: dict[str, dict]) -> list[str]:
    """Errors for metric names recorded by more than one notebook (claims would read an arbitrary one)."""
    owners: dict[str, list[str]] = {}
    for notebook, values in metrics.items():
        for name in values:
            owners.setdefault(name, []).append(notebook)
    return [f"metric {name} is recorded by several notebooks ({', '.join(nbs)}); metric names are per paper"
            for name, nbs in sorted(owners.items()) if len(nbs) > 1]


def _replace(staging: Path, destination: Path) -> None:
    """Swap the staged run into place; the old results are removed only after the swap."""
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
    os.replace(staging, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
