"""Converters from the external result tables (shared/data/external, subsets in tests/data/external) to
observations tables (:data:`ctxscale.observations.OBSERVATION_COLUMNS`), so that ``ctxscale fit`` and
``ctxscale compare`` run on them.

None of these sources has every axis of the law; what stands in for a missing one is stated here and is
the same for every model of a source, so it moves only the fitted scales (``C50``, ``n50``), not the
comparison between models or lengths:

- **RULER** (``ruler``): the 13-task average at 4K..128K input tokens against each model's claimed
  limit. No training compute: ``C = 6 N x 1e12`` with N the (active) parameters listed. No
  demonstrations: each input length is its own dataset (``len4096``...), so fit with ``--per-dataset``.
  Rows whose length equals the claimed limit are dropped (RULER's budget includes the answer, so the
  prompt is strictly shorter, while the raw-token penalty is exactly 0.5 there: rounding would decide).
- **HELMET** (``helmet``): one task per category (Recall, RAG, ICL, Cite, Re-rank, LongQA, Summ) at 8k..128k
  input tokens; compute ``6 N x 1e12`` from the listed parameters (API models, listed ``?``, dropped);
  each length its own dataset as for RULER.
- **Pythia** (``pythia``): 0- and 5-shot lm-eval scores of every checkpoint; each checkpoint is one model
  (its own compute ``6 N D``, ``n_ctx`` 2048). The file has no prompt token counts, so ``n_pmt`` stands in
  as ``(1 + n_shots) x 100`` tokens (a 100-token query and 100-token demonstrations); prompts never approach
  the 2048 limit, so this source tests the compute factor and a coarse shot effect only. Step-0
  checkpoints (compute 0) are dropped; only checkpoints evaluated at both shot counts are kept.
- **MIR-Bench** (``mir``): the many-shot inductive-reasoning leaderboard (exact-match accuracy of 21 models at
  4..2048 demonstrations; tasks ``mir-core`` and ``mir-extended``), where every added demonstration is another
  input-output example of the function to induce. No token counts: ``n_pmt`` stands in as
  ``MIR_QUERY_TOKENS + n_shots x MIR_TOKENS_PER_SHOT`` (100 + 60 n: 2048 shots are about 123k tokens, just inside the
  128k windows, as the benchmark sizes its prompts to fit them). ``n_ctx`` is each model's listed window (copied
  into the CSV with the scores). No training compute (API models): one stand-in ``MIR_COMPUTE`` for every model,
  so the compute factor is a constant and the set tests the context factor and the penalty only.
- **Cerebras-GPT table** (``cerebras``): the 0- and 5-shot lm-eval accuracies (HellaSwag, PIQA, WinoGrande,
  LAMBADA, ARC-e, ARC-c, OpenBookQA) that Cerebras published for its own models (Cerebras-GPT 111M..13B, its muP
  variants 111M..2.7B) and for OPT 125M..13B, GPT-J 6B and GPT-NeoX 20B. Each model is one model of the fit with
  the training FLOPs listed in that table (their own estimate, a real compute that varies over four orders of
  magnitude) and ``n_ctx`` 2048 (every model's window). The Pythia rows of the same table are left out of the CSV
  (they are the models of the choice set ``pythia``). No token counts: ``n_pmt`` stands in as for Pythia,
  ``(1 + n_shots) x 100`` tokens, so prompts stay far inside the window and the set tests the compute factor and
  a coarse shot effect only.

``n_instances`` is 1 in every converted table: the sources give means only, so the binomial objective and
instance bootstrap are not meaningful on them (the MSE fit never reads it).
"""

from __future__ import annotations

import sys

import pandas as pd

from ctxscale.model_info import training_compute
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.observations import OBSERVATION_COLUMNS, validate_observations

NOMINAL_TRAIN_TOKENS = 1e12  # the same stand-in D for every model of RULER and HELMET
PYTHIA_TOKENS_PER_EXAMPLE = 100  # the stand-in query and demonstration length of Pythia prompts
MIR_QUERY_TOKENS, MIR_TOKENS_PER_SHOT = 100, 60  # stand-in prompt lengths of MIR-Bench (module docstring)
MIR_COMPUTE = 1e25  # the same stand-in compute for every MIR-Bench model
CEREBRAS_TOKENS_PER_EXAMPLE = PYTHIA_TOKENS_PER_EXAMPLE  # the stand-in prompt lengths of the Cerebras-GPT table


def _table(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    return validate_observations(frame[OBSERVATION_COLUMNS].reset_index(drop=True), source=source)


def _length_cells(raw: pd.DataFrame, task, params) -> pd.DataFrame:
    """RULER and HELMET rows as cells: one dataset per input length, score in percent, C = 6 N x 1e12."""
    return pd.DataFrame({
        "model": raw["model"], "task": task, "dataset": "len" + raw["prompt_tokens"].astype(int).astype(str),
        "n_shots": 0, "n_pmt": raw["prompt_tokens"].astype(float), "n_ctx": raw["context_limit_tokens"].astype(float),
        "compute": training_compute(params, NOMINAL_TRAIN_TOKENS), "score": raw["score"].astype(float) / 100.0, "n_instances": 1})


def ruler_observations(raw: pd.DataFrame) -> pd.DataFrame:
    """``ruler_readme.csv`` -> observations (task ``ruler``; module docstring)."""
    raw = raw[raw["params_as_listed"].notna() & (raw["prompt_tokens"] != raw["context_limit_tokens"])].copy()
    active = raw["params_as_listed"].str.extract(r"^([\d.]+)B", expand=False).astype(float) * 1e9
    raw = raw[active.notna()]
    raw["model"] = raw["model"] + " " + raw["params_as_listed"]
    return _table(_length_cells(raw, "ruler", active[active.notna()]), "ruler")


def _only(raw: pd.DataFrame, column: str, wanted, what: str) -> pd.DataFrame:
    """The rows whose ``column`` is one of ``wanted`` (all when none are named); an unknown name is a user error."""
    if not wanted:
        return raw
    unknown = sorted(set(wanted) - set(raw[column]))
    if unknown:
        raise UserError(f"unknown {what} {', '.join(unknown)}; the file has {', '.join(sorted(raw[column].unique()))}")
    return raw[raw[column].isin(wanted)]


def helmet_observations(raw: pd.DataFrame, categories=None) -> pd.DataFrame:
    """``helmet_by_length.csv`` -> observations, one task per category (module docstring)."""
    params = pd.to_numeric(raw["params_b_as_listed"], errors="coerce") * 1e9
    raw = raw[params.notna() & (raw["prompt_tokens"] != raw["context_limit_tokens"])]
    raw = _only(raw, "category", categories, "HELMET categories")
    raw = raw[raw["score"].notna()]
    return _table(_length_cells(raw, raw["category"], params[raw.index]), "helmet")


def pythia_observations(raw: pd.DataFrame, tasks=None, steps=None) -> pd.DataFrame:
    """``pythia_0shot_5shot.csv`` -> observations, one model per checkpoint (module docstring)."""
    raw = raw[raw["compute_flops"] > 0]
    if tasks:
        raw = raw[raw["task"].isin(tasks)]
    if steps:
        raw = raw[raw["step"].isin(steps)]
    both = raw.groupby(["model", "step", "task"])["n_shots"].transform("nunique") == 2
    raw = raw[both]
    if raw.empty:
        raise UserError("no Pythia checkpoints with both 0- and 5-shot scores left after the filters")
    frame = pd.DataFrame({
        "model": raw["model"] + "@step" + raw["step"].astype(str), "task": raw["task"], "dataset": raw["task"],
        "n_shots": raw["n_shots"], "n_pmt": (1.0 + raw["n_shots"]) * PYTHIA_TOKENS_PER_EXAMPLE,
        "n_ctx": raw["context_limit_tokens"].astype(float), "compute": raw["compute_flops"].astype(float),
        "score": raw["score"].astype(float), "n_instances": 1})
    return _table(frame, "pythia")


def mir_observations(raw: pd.DataFrame) -> pd.DataFrame:
    """``mir_bench_readme.csv`` -> observations, tasks ``mir-core`` and ``mir-extended`` (module docstring)."""
    raw = raw[raw["score"].notna()]
    task = "mir-" + raw["split"].astype(str)
    frame = pd.DataFrame({
        "model": raw["model"], "task": task, "dataset": task, "n_shots": raw["n_shots"].astype(int),
        "n_pmt": MIR_QUERY_TOKENS + raw["n_shots"].astype(float) * MIR_TOKENS_PER_SHOT,
        "n_ctx": raw["context_limit_tokens"].astype(float), "compute": MIR_COMPUTE,
        "score": raw["score"].astype(float) / 100.0, "n_instances": 1})
    return _table(frame, "mir")


def cerebras_observations(raw: pd.DataFrame, tasks=None) -> pd.DataFrame:
    """``cerebras_gpt_0shot_5shot.csv`` -> observations, one model per row of the table (module docstring)."""
    raw = raw[raw["score"].notna() & (raw["training_flops"] > 0)]
    raw = _only(raw, "task", tasks, "Cerebras-GPT table tasks")
    frame = pd.DataFrame({
        "model": raw["model"], "task": raw["task"], "dataset": raw["task"], "n_shots": raw["n_shots"].astype(int),
        "n_pmt": (1.0 + raw["n_shots"]) * CEREBRAS_TOKENS_PER_EXAMPLE,
        "n_ctx": raw["context_limit_tokens"].astype(float), "compute": raw["training_flops"].astype(float),
        "score": raw["score"].astype(float), "n_instances": 1})
    return _table(frame, "cerebras")


CONVERTERS = {"ruler": ruler_observations, "helmet": helmet_observations, "pythia": pythia_observations,
              "mir": mir_observations, "cerebras": cerebras_observations}


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``ctxscale external SOURCE IN.csv --out OBS.csv``: convert one external table (module docstring)."""
    from ctxscale.observations import write_observations

    parser = step_parser("ctxscale external", __doc__.splitlines()[0])
    parser.add_argument("source", choices=sorted(CONVERTERS))
    parser.add_argument("table", help="the source's CSV (shared/data/external/...)")
    parser.add_argument("--out", required=True, help="observations CSV to write")
    args = parse_step_args(parser, argv)
    try:
        raw = pd.read_csv(args.table)
    except (OSError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {args.table}: {str(exc).splitlines()[0]}") from None
    try:
        observations = CONVERTERS[args.source](raw)
    except KeyError as exc:
        raise UserError(f"{args.table} is not a {args.source} table (no column {exc})") from None
    print(write_observations(args.out, observations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
