"""The miniature's generated datasets: one in-context-learning task per paper category, in the prepared format.

``python -m ctxscale.datasets.synthetic --dataset NAME --spec JSON [--tokenizer DIR] --out DIR``

writes ``shots.jsonl``, ``test.jsonl`` and ``manifest.json`` (docs/architecture.md) through
:func:`ctxscale.datasets.prepared.write_prepared`, so the demo data takes the same lm-eval task path as the real
datasets. The spec is a JSON object: a config entry of ``data.synthetic``, whose keys, meanings and defaults
the config schema defines (``$defs/synthetic_spec`` in src/ctxscale/schemas/config.schema.yaml: ``kind``, and
optionally ``shot_pool``, ``reveal_share``, ``n_symbols``, ``sentence_words``, ``shot_order``; unknown keys are
refused), plus the keys the workflow adds from the config (:data:`RUN_KEYS`): ``task`` (must be the kind's
category), ``seed`` (with the dataset name, fixes the secret, shot pool, test set and shot orders),
``max_eval_samples`` (test instances) and ``max_length_per_example`` (the paper's length filter, in tokens of
``--tokenizer``); left out on the command line, those take the defaults of the config's ``data`` section.

What makes the curves graded (the design every kind shares)
-----------------------------------------------------------
Each dataset draws one secret from ``(seed, dataset name)``: the offset of ``arithmetic``, the answer letter of
``recall``, the word ending of ``cipher``. A test question can only be answered by reading the secret off a
demonstration that shows it, and **only a share ``reveal_share`` (default 0.1) of the demonstrations do**:

- a *revealing* demonstration marks its input with ``!`` and shows its answer: ``Q: 32!\nA: 732``;
- a *withheld* demonstration marks its input with ``?`` and answers ``?``: ``Q: 14?\nA: ?``;
- the test question carries no mark: ``Q: 41\nA:``, reference ``741``.

Exactly ``round(reveal_share * shot_pool)`` rows of the pool reveal. Every test instance draws its own order of
the pool (``shot_order: per-instance``, :func:`ctxscale.datasets.prepared.instance_shot_order`; its k shots are the
first k of that order, so they nest across k), so the chance that an instance's k shots contain a revealing one
rises smoothly with k: 1 - C(pool - reveals, k) / C(pool, k), with the defaults 0.10, 0.28, 0.54, 0.82, 0.98,
1.00 at 1, 3, 7, 15, 31, 63 shots. The orders are stratified (:func:`stratified_instance_ids`): each instance's
first revealing shot sits at one quantile of its distribution, so a dataset's share follows that curve to within
one instance at every k instead of carrying the sampling noise of independent draws, a bump every model would
share (at 96 instances, 0.34 for 0.28 at 3 shots). A model's score is that chance times how reliably it finds
and copies the secret (what more compute improves), past its context limit its positions were never trained. With the
paper's nested order (``shot_order: nested``: every instance gets the pool's first k) a cell's instances all
see the same demonstrations, and a deterministic model's score jumps from 0 to its ceiling at the first
revealing shot: a step, not a curve. The paper gets its curves by averaging many real datasets of varied
difficulty; one generated dataset per task gets them from the shot draw, which is this deviation's reason.

Models learn the convention from their training texts (:func:`training_episode`): runs of revealing and
withheld demonstrations with unmarked questions among them, a question answered with the secret once a
demonstration revealed it and with ``?`` before. So a model that saw no revealing shot abstains (``?`` scores 0
on every metric) instead of guessing, and a zero-shot or unrevealed instance scores 0 rather than a chance
floor (which matters for ``recall``, whose five letters would otherwise give 0.2 by luck).

The three kinds (``recall``, ``arithmetic``, ``cipher``: prompt shapes, metrics, what each secret is and why) are
described and defined in :mod:`ctxscale.datasets.synthetic_kinds`.

Where the paper is silent, the choices and why:

- The models read the secret off the context by copying what revealing demonstrations show (the answer
  letter, the leading digit, the ending), combined with what the question itself shows (the digits to keep,
  the words' first letters). Measured on the tiny models (benchmarks/bench_tiny.py), 2-layer 64-wide Llamas do
  not form content-based recall (induction) within thousands of CPU steps, so tasks that need it (a random
  key-to-value table, a random symbol cipher) stay at chance for every model.
- One-character symbols and marks: the tiny models use a character tokenizer (:mod:`ctxscale.tiny`), so
  prompts stay short and generation cheap, while 63 shots still run far past a 128-token context.
- Mappings (a secret with its question set) are split by a stable hash into an *evaluation* half and a
  *training* half (:func:`mapping_purpose`): datasets draw from the first, the tiny models' training texts (a
  fresh mapping per sequence) from the second, so no model is trained on a dataset's own mapping. The secrets
  alone have few values (5 letters, 5 offsets, 10 endings), so every secret also occurs in training; what keeps
  the shots necessary is that each training text has its own, and a model never learns which one a dataset
  uses (every model abstains at zero shots).
"""


from __future__ import annotations

import hashlib
import json
import logging
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxscale.config import schema_defaults, validate_definition
from ctxscale.datasets.prepared import PreparedData, instance_shot_order, shot_order_of, write_prepared
from ctxscale.datasets.synthetic_kinds import SEPARATOR, Kind, kind_named
from ctxscale.datasets.tokenizer import load_tokenizer, prompt_token_profile, tokenizer_info
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_json_option, parse_step_args, step_parser

log = logging.getLogger("ctxscale.datasets.synthetic")  # also when run as __main__

# The spec's keys besides the generator's own ($defs/synthetic_spec of the config schema): the workflow fills
# them from the config's data section, whose defaults they take on the command line too.
RUN_KEYS = ("task", "seed", "max_eval_samples", "max_length_per_example")
# The generator's defaults ($defs/synthetic_spec of the config schema), which training episodes use too.
_GENERATOR_DEFAULTS = schema_defaults("synthetic_spec")
# Training mappings vary their size around the datasets' so the models learn the formats in general.
TRAINING_SYMBOLS = (4, 12)
REVEAL_MARK = "!"  # ends the input of a demonstration that shows its answer
WITHHELD_MARK = "?"  # ends the input of a demonstration whose answer is withheld
ABSTAIN = "?"  # the answer of a withheld demonstration, and of a question asked before any reveal
# Training texts: the share of unmarked questions among their rows, and the range of each text's reveal share
# (around the datasets' default, down to sparse reveals, so one revealing row among many withheld is learned).
TRAINING_QUESTION_SHARE = 0.3
TRAINING_REVEAL_SHARES = (0.1, 0.6)


def mapping_fingerprint(kind: str, mapping: dict) -> str:
    """A stable hex digest of a mapping (canonical JSON with the kind)."""
    canonical = json.dumps({"kind": kind, "mapping": mapping}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def mapping_purpose(kind: str, mapping: dict) -> str:
    """``"evaluation"`` or ``"training"``: the half of mapping space a mapping belongs to (stable hash)."""
    return "evaluation" if int(mapping_fingerprint(kind, mapping)[:8], 16) % 2 == 0 else "training"


def draw_mapping(kind: Kind, rng: np.random.Generator, options: dict, purpose: str) -> dict:
    """Draw mappings until one falls in the ``purpose`` half (about two draws on average)."""
    while True:
        mapping = kind.draw_mapping(rng, options)
        if mapping_purpose(kind.name, mapping) == purpose:
            return mapping


def _options(spec: dict) -> dict:
    """The generator's options of a spec whose defaults are filled in (:func:`split_spec`)."""
    return {key: spec[key] for key in ("n_symbols", "sentence_words")}


def demonstration(example: tuple[str, str], reveals: bool) -> tuple[str, str]:
    """A shot row from a question: marked ``!`` with its answer, or marked ``?`` with the answer withheld."""
    input_text, reference = example
    return (input_text + REVEAL_MARK, reference) if reveals else (input_text + WITHHELD_MARK, ABSTAIN)


def split_spec(dataset: str, spec: dict) -> tuple[dict, dict]:
    """A spec's generator part (checked against the schema's ``$defs/synthetic_spec``, defaults filled in) and
    its run part (task, seed, max_eval_samples, max_length_per_example; defaults: the config's ``data``)."""
    if not isinstance(spec, dict):
        raise UserError("the synthetic spec must be a JSON object")
    generator = {k: v for k, v in spec.items() if k not in RUN_KEYS}
    validate_definition(generator, "synthetic_spec", f"synthetic spec of {dataset}")
    data = schema_defaults("data")
    run = {"task": spec.get("task"), "seed": spec.get("seed", data["seed"]),
           "max_eval_samples": spec.get("max_eval_samples", data["max_eval_samples"]),
           "max_length_per_example": spec.get("max_length_per_example", data["max_length_per_example"])}
    for key in ("seed", "max_eval_samples", "max_length_per_example"):
        value = run[key]
        if isinstance(value, bool) or not isinstance(value, int) or (key != "seed" and value < 1):
            raise UserError(f"synthetic spec of {dataset}: {key} must be a{' positive' if key != 'seed' else 'n'} integer")
    return generator, run


def dataset_rng(seed: int, dataset: str) -> np.random.Generator:
    """The dataset's random stream: from the config seed and the dataset name (so datasets differ)."""
    return np.random.default_rng([int(seed), zlib.crc32(dataset.encode("utf-8"))])


@dataclass(frozen=True)
class SyntheticDataset(PreparedData):
    """A generated dataset: prepared data (shot pool, test rows, manifest) with its name, kind and the secret
    mapping (for checks)."""

    name: str
    kind: Kind
    mapping: dict


def first_reveal_quantiles(pool_size: int, n_reveal: int, n: int) -> list[int]:
    """The ``n`` mid-quantiles ``(j + 0.5) / n`` of the position (1-based) of the first revealing shot in a
    uniformly random order of the pool: one plus the withheld shots drawn before it, a negative hypergeometric
    count (``P(first > k) = C(pool - reveals, k) / C(pool, k)``)."""
    from scipy.stats import nhypergeom

    withheld_before = nhypergeom(pool_size, pool_size - n_reveal, 1).ppf((np.arange(n) + 0.5) / n)
    return [int(k) + 1 for k in withheld_before]


def stratified_instance_ids(dataset: str, seed: int, reveals: list, n_test: int, rng: np.random.Generator,
                            max_tries: int = 1_000_000) -> list[str]:
    """Test ids whose shot orders are stratified on the first revealing shot.

    Each instance's order is :func:`ctxscale.datasets.prepared.instance_shot_order` of ``(seed, id)``, as the evaluation
    draws it. Independent orders leave the share of instances whose k shots hold a revealing one off the
    hypergeometric curve by the sampling noise of ``n_test`` draws (measured at 96 instances: 0.34 for 0.28 at
    3 shots, 0.87 for 0.82 at 15), and every model sees the same instances, so that noise is a bump shared by
    all models' curves. Here instance n gets one of the :func:`first_reveal_quantiles` as its target (the
    assignment shuffled by ``rng``) and the id ``{dataset}-{n:04d}``, or ``{dataset}-{n:04d}-{v}`` with the
    first ``v`` whose order puts the first revealing shot exactly at the target: the share at every k is then
    the curve to within ``1 / n_test``.
    """
    targets = [int(k) for k in rng.permutation(first_reveal_quantiles(len(reveals), sum(reveals), n_test))]
    ids = []
    for n, target in enumerate(targets):
        for variant in range(max_tries):
            row_id = f"{dataset}-{n:04d}" + (f"-{variant}" if variant else "")
            order = instance_shot_order(seed, row_id, len(reveals))
            if next(position for position, i in enumerate(order, 1) if reveals[i]) == target:
                ids.append(row_id)
                break
        else:  # a target is a quantile of the very distribution the tries sample, so some try hits it
            raise RuntimeError(f"{dataset}: no shot order with its first revealing shot at {target}")
    return ids


def generate(dataset: str, spec: dict, tokenizer=None) -> SyntheticDataset:
    """Generate a dataset from its spec (module docstring). With a tokenizer, apply the length filter."""
    spec, run = split_spec(dataset, spec)
    kind = kind_named(spec["kind"])
    if run["task"] not in (None, kind.category):
        raise UserError(
            f"dataset {dataset}: kind {kind.name} belongs to task {kind.category}, not {run['task']!r}"
        )
    options = _options(spec)
    seed, n_test, pool_size = run["seed"], run["max_eval_samples"], spec["shot_pool"]
    max_tokens = run["max_length_per_example"]

    rng = dataset_rng(seed, dataset)
    mapping = draw_mapping(kind, rng, options, "evaluation")
    # spawn(3)'s first two children are spawn(2)'s: the third (the strata's assignment) changed no earlier row
    shot_rng, test_rng, strata_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(3))

    def fits(input_text: str, reference: str) -> bool:
        if tokenizer is None or max_tokens is None:
            return True
        text = kind.format_shot(input_text, reference)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= int(max_tokens)

    def draw_rows(stream: np.random.Generator, count: int, reveals=None) -> list[tuple[str, str]]:
        """``count`` rows that pass the length filter: questions, or shot rows (``reveals[i]``: row i reveals)."""
        rows = []
        for _ in range(100 * count):
            if len(rows) == count:
                return rows
            example = kind.draw_example(mapping, stream)
            if reveals is not None:
                example = demonstration(example, reveals[len(rows)])
            if fits(*example):
                rows.append(example)
        raise UserError(
            f"dataset {dataset}: too few examples fit max_length_per_example={max_tokens}; raise it"
        )

    n_reveal = max(1, round(spec["reveal_share"] * pool_size))
    reveals = shot_rng.permutation([True] * n_reveal + [False] * (pool_size - n_reveal)).tolist()
    shots = [{"input": i, "reference": r} for i, r in draw_rows(shot_rng, pool_size, reveals)]
    test_rows = draw_rows(test_rng, n_test)
    if spec["shot_order"] == "per-instance":
        ids = stratified_instance_ids(dataset, seed, reveals, n_test, strata_rng)
    else:
        ids = [f"{dataset}-{n:04d}" for n in range(n_test)]
    test = [{"id": row_id, "input": i, "reference": r} for row_id, (i, r) in zip(ids, test_rows)]
    stop = [SEPARATOR] + ([kind.prefix] if kind.prefix else [])
    manifest = {
        "dataset": dataset,
        "task": kind.category,
        "prefix": kind.prefix,
        "suffix": kind.suffix,
        "separator": SEPARATOR,
        "stop": stop,
        "metric": kind.metric,
        "max_new_tokens": kind.max_new_tokens(options),
        "counts": {"shots": len(shots), "test": len(test), "revealing_shots": n_reveal},
        "seeds": {"seed": seed, "dataset_stream": [seed, zlib.crc32(dataset.encode("utf-8"))]},
        **({"shot_order": {"kind": "per-instance", "seed": seed}} if spec["shot_order"] == "per-instance" else {}),
        "source": {
            "synthetic": kind.name,
            "options": {**options, "reveal_share": spec["reveal_share"]},
            "mapping_fingerprint": mapping_fingerprint(kind.name, mapping),
            "max_length_per_example": max_tokens,
        },
    }
    return SyntheticDataset(shots=shots, test=test, manifest=manifest, name=dataset, kind=kind, mapping=mapping)


def training_episode(kind: Kind, rng: np.random.Generator, min_chars: int) -> tuple[str, dict]:
    """One training text and its secret: rows of a fresh *training-half* secret, at least ``min_chars`` long.

    The rows are the datasets' three forms (module docstring): a share :data:`TRAINING_QUESTION_SHARE` of
    unmarked questions, answered with the secret once an earlier row revealed it and with ``?`` before; the
    rest demonstrations, each revealing with the text's own share (drawn from :data:`TRAINING_REVEAL_SHARES`)
    and withheld otherwise. The mapping size varies over :data:`TRAINING_SYMBOLS` so the models learn the task
    in general rather than one size; the prompt format and sentence length are the datasets' defaults.
    """
    options = {
        **_options(_GENERATOR_DEFAULTS),
        "n_symbols": int(rng.integers(TRAINING_SYMBOLS[0], TRAINING_SYMBOLS[1] + 1)),
    }
    mapping = draw_mapping(kind, rng, options, "training")
    reveal_share = float(rng.uniform(*TRAINING_REVEAL_SHARES))
    pieces, length, revealed = [], 0, False
    while length < min_chars:
        example = kind.draw_example(mapping, rng)
        if rng.random() < TRAINING_QUESTION_SHARE:
            row = (example[0], example[1] if revealed else ABSTAIN)
        else:
            reveals = bool(rng.random() < reveal_share)
            row = demonstration(example, reveals)
            revealed = revealed or reveals
        piece = kind.format_shot(*row)
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces), mapping


def write(dataset: SyntheticDataset, out_dir: Path, tokenizer=None) -> Path:
    """Write the prepared-data files (docs/architecture.md) through :func:`ctxscale.datasets.prepared.write_prepared`."""
    info, manifest = None, dataset.manifest
    if tokenizer is not None:
        info = tokenizer_info(tokenizer)
        profile = prompt_token_profile(tokenizer, dataset.shots, dataset.test, manifest["prefix"], manifest["suffix"],
                                       manifest["separator"], per_instance=shot_order_of(manifest)["kind"] == "per-instance")  # fmt: skip
        manifest = {**manifest, "prompt_tokens": profile}
    return write_prepared(out_dir, shots=dataset.shots, test=dataset.test, manifest=manifest, tokenizer=info)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = step_parser("python -m ctxscale.datasets.synthetic", __doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset name (with the seed, fixes the mapping)")
    parser.add_argument("--spec", required=True, help="JSON object: kind, seed, max_eval_samples, ...")
    parser.add_argument("--tokenizer", help="tokenizer directory, for the length filter and the manifest")
    parser.add_argument("--out", required=True, help="output directory (prepared-data format)")
    args = parse_step_args(parser, argv)
    spec = parse_json_option(args.spec, "--spec")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    dataset = generate(args.dataset, spec, tokenizer)
    write(dataset, Path(args.out), tokenizer)
    log.info(
        "wrote %s (%s, %s): %d shots, %d test instances to %s",
        args.dataset, dataset.kind.name, dataset.kind.category, len(dataset.shots), len(dataset.test), args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
