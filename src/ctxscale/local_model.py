"""A checkpoint already on disk as a model source (config ``source: local``): a Hugging Face checkpoint
folder is copied, a GGUF file is converted once into one, so every backend reads the same folder.

GGUF: transformers dequantizes it on load (``gguf_file=``, needs the ``gguf`` package) but refuses to
``save_pretrained`` a model that still carries the GGUF ``quantization_config``, so the dequantized weights
are moved into a fresh model built from the same config without it, and saved in float32 (what the
dequantized weights are; bf16 would round them a second time).

CLI: ``python -m ctxscale.local_model --path FILE_OR_DIR --out DIR``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from ctxscale.errors import UserError

from ctxscale.steps import cli_main, parse_step_args, step_parser

log = logging.getLogger("ctxscale.local_model")


def convert(source: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face checkpoint folder at ``out_dir`` from a checkpoint folder or a ``.gguf`` file."""
    source, out_dir = Path(source).expanduser().resolve(), Path(out_dir)
    if not source.exists():
        raise UserError(f"local model {source} does not exist")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename at the end, so an interrupted conversion leaves no half folder.
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if source.is_dir():
            if not (source / "config.json").is_file():
                raise UserError(f"local model folder {source} has no config.json (not a Hugging Face checkpoint)")
            shutil.copytree(source, staging, dirs_exist_ok=True)
        elif source.suffix == ".gguf":
            _convert_gguf(source, staging)
        else:
            raise UserError(f"local model {source} is neither a checkpoint folder nor a .gguf file")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.chmod(0o755)  # mkdtemp made it private
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError:
        raise UserError("converting a GGUF file needs the gguf package (pip install gguf)") from None
    import torch
    import transformers

    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("dequantizing %s", gguf_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may appear under one name only; anything else missing means a wrong conversion.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("saved %s (%d parameters) to %s", type(model).__name__, model.num_parameters(), out_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(
        "python -m ctxscale.local_model",
        "Copy a local checkpoint folder, or convert a GGUF file, into a Hugging Face checkpoint folder.",
    )
    parser.add_argument("--path", required=True, help="checkpoint folder or .gguf file on disk")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_step_args(build_parser(), argv)
    convert(args.path, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
