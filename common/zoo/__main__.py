"""Run a zoo training notebook: ``python -m common.zoo train <notebook> [-p name=value ...] [--params 'a=1 b=2']``.

The notebook ``common/zoo/notebooks/<notebook>.ipynb`` trains a model and writes its checkpoint with
:func:`common.zoo.save_checkpoint`; the executed copy goes to ``results/zoo/<notebook>.ipynb`` so the
training run (losses, plots, evaluation) can be read and cited next to the checkpoint it produced.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from pathlib import Path

from common.zoo import NOTEBOOK_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]


def _parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"error: parameter {pair!r} is not name=value")
        try:
            params[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name] = text
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="execute a zoo notebook (it writes its checkpoint)")
    train.add_argument("notebook", help="name of a notebook in common/zoo/notebooks/ (without .ipynb)")
    train.add_argument("-p", "--param", action="append", default=[], help="name=value parameter override")
    train.add_argument("--params", default="", help="space-separated name=value pairs, shell-style quoting (make's PARAMS)")
    train.add_argument("--output", default=None, metavar="NAME",
                       help="name of the executed copy under results/zoo/ (default: the notebook's name); "
                            "for a second checkpoint from the same notebook, e.g. --output train_tinylm_recall")
    sub.add_parser("list", help="list the zoo notebooks and checkpoints")
    args = parser.parse_args(argv)

    notebooks = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
    if args.command == "list":
        from common.zoo import available, load_manifest

        print("notebooks:  ", ", ".join(notebooks) or "none")
        for name in available():
            manifest = load_manifest(name)
            print(f"checkpoint:  {name}  ({manifest.get('size_bytes', 0) / 1e6:.2f} MB, from {manifest.get('notebook', '?')})")
        return 0

    if args.notebook not in notebooks:
        print(f"error: unknown zoo notebook {args.notebook!r} (known: {', '.join(notebooks) or 'none'})", file=sys.stderr)
        return 2
    try:
        params = _parse_params(shlex.split(args.params) + args.param)
    except ValueError as exc:  # unbalanced quotes
        raise SystemExit(f"error: cannot read --params {args.params!r}: {exc}") from None
    import papermill

    output = args.output or args.notebook
    if not output.replace("_", "").isalnum() or not output[0].isalpha():
        print(f"error: --output {output!r} must be a name of letters, digits and underscores", file=sys.stderr)
        return 2
    out_dir = REPO_ROOT / "results" / "zoo"
    out_dir.mkdir(parents=True, exist_ok=True)
    source = NOTEBOOK_DIR / f"{args.notebook}.ipynb"
    papermill.execute_notebook(
        str(source),
        str(out_dir / f"{output}.ipynb"),
        parameters=params,
        cwd=str(NOTEBOOK_DIR),
        kernel_name="python3",
        progress_bar=True,
    )
    print(f"executed notebook: results/zoo/{output}.ipynb")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
