"""The model zoo: small models trained in this repository, committed as safetensors with a manifest.

A checkpoint ``name`` is two files in ``common/zoo/checkpoints/``:

* ``<name>.safetensors``: the tensors;
* ``<name>.json``: the manifest: what the model is (``config``), how it was trained (``training``:
  seed, steps, data version, final loss, ...), how good it is (``evaluation``), which notebook trained
  it (``notebook``), and the ``sha256`` and ``size_bytes`` of the safetensors file.

:func:`load_checkpoint` recomputes the sha256 and refuses a file that does not match its manifest, so a
silently replaced or corrupted checkpoint can never feed a result. Checkpoints are written only by the
zoo's training notebooks (``common/zoo/notebooks/``, run with ``make zoo MODEL=<notebook name>``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.harness import context
from common.harness.io import sha256_file

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"


class ChecksumError(RuntimeError):
    """A checkpoint file does not match the sha256 recorded in its manifest."""


def _paths(name: str, directory: Path | None) -> tuple[Path, Path]:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"checkpoint name {name!r}: use letters, digits, '-' and '_' only")
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def available(directory: Path | None = None) -> list[str]:
    """Names of the checkpoints that have a manifest."""
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    return sorted(p.stem for p in directory.glob("*.json"))


def save_checkpoint(name: str, tensors: dict, manifest: dict, directory: Path | None = None) -> Path:
    """Write ``tensors`` (a flat ``{name: torch.Tensor}``) and ``manifest`` (JSON-able) for ``name``.

    The manifest gains ``name``, ``format``, ``sha256`` and ``size_bytes``; both files are written to a
    temporary name first and renamed, so an interrupted save never leaves a half-written checkpoint.
    """
    from safetensors.torch import save_file

    weights_path, manifest_path = _paths(name, directory)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    tmp_weights = weights_path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp_weights))
    manifest = dict(manifest)
    manifest.update(
        name=name,
        format="safetensors",
        sha256=sha256_file(tmp_weights),
        size_bytes=tmp_weights.stat().st_size,
    )
    tmp_manifest = manifest_path.with_suffix(".json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp_weights, weights_path)
    os.replace(tmp_manifest, manifest_path)
    return weights_path


def _note(name: str, path: Path, **shas) -> None:
    """Inside a harness run, record that the result depends on this zoo file (see ``recording.note_checkpoint``).

    A paper-local checkpoint (another ``directory``) is in its paper's code hash instead.
    """
    if context.run_dir() is not None and path.parent.resolve() == CHECKPOINT_DIR.resolve():
        from common.harness.recording import note_checkpoint

        note_checkpoint(name, **shas)


def load_manifest(name: str, directory: Path | None = None) -> dict:
    _, manifest_path = _paths(name, directory)
    if not manifest_path.exists():
        known = ", ".join(available(directory)) or "none"
        raise FileNotFoundError(f"no checkpoint {name!r} in the zoo (known: {known}); train it with its zoo notebook")
    _note(name, manifest_path, manifest_sha256=sha256_file(manifest_path))
    return json.loads(manifest_path.read_text())


def load_checkpoint(name: str, directory: Path | None = None) -> tuple[dict, dict]:
    """Return ``(tensors, manifest)`` for ``name`` after checking the file's sha256 against the manifest.

    Raises :class:`ChecksumError` when the file was modified, truncated or replaced. Inside a harness run the
    name and sha256 are recorded in the run's provenance, so that retraining the checkpoint makes it stale.
    """
    from safetensors.torch import load_file

    weights_path, _ = _paths(name, directory)
    manifest = load_manifest(name, directory)
    if not weights_path.exists():
        raise FileNotFoundError(f"checkpoint {name!r}: manifest found but {weights_path.name} is missing")
    actual = sha256_file(weights_path)
    if actual != manifest.get("sha256"):
        raise ChecksumError(
            f"checkpoint {name!r}: sha256 of {weights_path.name} is {actual[:16]}..., the manifest says "
            f"{str(manifest.get('sha256'))[:16]}...; the file was modified or replaced. Restore it from git "
            f"(git checkout -- {weights_path}) or retrain it with its zoo notebook."
        )
    _note(name, weights_path, sha256=actual)
    return load_file(str(weights_path)), manifest
