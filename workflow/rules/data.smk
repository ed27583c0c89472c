# Datasets in the prepared-data format (shot pool, fixed test subset, manifest), once per tokenizer family:
# downloaded and built like the official constructors (data.source: hf) or generated (data.source: synthetic).

PREPARED = multiext("resources/data/{family}/{dataset}/", "manifest.json", "shots.jsonl", "test.jsonl")

if DATA_SOURCE == "hf":

    rule prepare_dataset:
        input:
            tokenizer=tokenizer_dir,
        output:
            PREPARED,
        params:
            settings=data_settings(),
        log:
            "logs/prepare_dataset/{family}/{dataset}.log",
        retries: 2
        conda:
            CONDA_ENV
        shell:
            "python -m ctxscale.datasets prepare --dataset {wildcards.dataset} --tokenizer {input.tokenizer}"
            " --max-length-per-example {params.settings[max_length_per_example]}"
            " --max-eval-samples {params.settings[max_eval_samples]} --seed {params.settings[seed]}"
            " --out resources/data/{wildcards.family}/{wildcards.dataset} 2> {log}"

else:

    rule synthesize_dataset:
        input:
            tokenizer=tokenizer_dir,
        output:
            PREPARED,
        params:
            spec=synthetic_spec,
        log:
            "logs/synthesize_dataset/{family}/{dataset}.log",
        conda:
            CONDA_ENV
        shell:
            "python -m ctxscale.datasets.synthetic --dataset {wildcards.dataset} --spec {params.spec:q}"
            " --tokenizer {input.tokenizer} --out resources/data/{wildcards.family}/{wildcards.dataset} 2> {log}"
