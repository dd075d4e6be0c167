"""Work done once per run before the first step stays done once: the train step is traced a single time over every
batch length and epoch, and the tokenizer graph is traced a single time for every tf.data pipeline of a run.

Each extra trace of a MiniLM train step costs seconds of one core before training starts (the issue-10 profile:
a lazily built F1 metric made TensorFlow trace the whole step twice)."""

from conftest import text_config, validated


def test_a_classification_run_traces_its_train_step_and_tokenizer_once(tmp_path, text_data):
    from tfsft.trainer import fit_and_evaluate, prepare

    config = validated(
        text_config(
            text_data,
            tmp_path,
            seed=0,  # TensorFlow's global seed 0 once broke the per-epoch shuffle: this run covers it end to end
            training={"epochs": 2, "early_stopping": {"enabled": False}},
        )
    )
    prepared = prepare(config, resume="never")
    model = prepared.model
    traces = []
    original_train_step = model.train_step

    def counted_train_step(data):
        traces.append(1)
        return original_train_step(data)

    model.train_step = counted_train_step  # Keras builds its train function from the instance's train_step
    result = fit_and_evaluate(prepared, verbose=0)

    assert len(result.history) == 2
    assert "val_macro_f1" in result.history[-1] and "macro_f1" in result.metrics["test"]
    assert len(traces) == 1, f"train_step traced {len(traces)} times"
    # training, validation, its length order, test evaluation and its order: one traced tokenizer for all of them
    assert prepared.modality._tokenize_batch.experimental_get_tracing_count() == 1
