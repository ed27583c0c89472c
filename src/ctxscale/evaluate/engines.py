"""The engines by name (the ``backend`` setting), and loading one: :data:`ENGINES`, :func:`build_engine`,
:class:`SharedEngine`. A new engine is a subclass of :class:`~ctxscale.evaluate.engine.Engine` and one line in
:data:`ENGINES` (and its name in the config schema's ``backend`` enum)."""

from __future__ import annotations

import json
from pathlib import Path

from ctxscale.errors import UserError
from ctxscale.evaluate.engine import Engine
from ctxscale.evaluate.hf_engine import HfEngine
from ctxscale.evaluate.settings import Settings
from ctxscale.evaluate.vllm_engine import VllmEngine

ENGINES: dict[str, type[Engine]] = {
    VllmEngine.name: VllmEngine,
    HfEngine.name: HfEngine,
}


def _read_model_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {model_dir / 'config.json'}: {error}") from None


def build_engine(model_dir: str | Path, settings: Settings, max_new_tokens: int) -> Engine:
    """Load the model once, in the engine ``settings.backend`` names, with an explicit ``max_length``."""
    model_dir = Path(model_dir).resolve()
    config = _read_model_config(model_dir)
    return ENGINES[settings.backend].load(model_dir, config, settings, max_new_tokens)


class SharedEngine:
    """One engine for several :func:`~ctxscale.evaluate.runner.evaluate` calls of one model (a per-model job),
    built on first need, so the model is loaded once per job and a job whose every shot count is cached loads
    nothing."""

    def __init__(self, model_dir: str | Path, settings: Settings):
        self.model_dir, self.settings = Path(model_dir).resolve(), settings
        self.engine: Engine | None = None

    def get(self, max_new_tokens: int) -> Engine:
        """The engine, built now if this is the first need (``max_new_tokens``: the first dataset's)."""
        if self.engine is None:
            self.engine = build_engine(self.model_dir, self.settings, max_new_tokens)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
