"""Evaluation throughput: length-sorted batches against file-order batches, side by side in one process.

    python scripts/bench_eval_order.py                   # the quickstart's MiniLM on the 2,000 demo test tweets
    python scripts/bench_eval_order.py --repeats 5 --config configs/quickstart.yaml --data path/to/test.csv

`tfsft.evaluation.predict_logits` (what evaluation, calibration, worst examples and `tfsft.evaluate` use) runs
over the split with the records sorted by token length (each batch padded to its own longest text), then puts
the logits back in record order. This times it against the same call in file order (the private switch
`evaluation._SORTED = False`, the behaviour before), alternating the two so that a load that changes during the
run weighs on both, after one untimed pass of each (tracing, tokenizer and oneDNN warm-up). The head is untrained:
the time does not depend on the weights. It also times the length pass (included in the sorted pass) alone and
checks that both orders give the same logits per record.

Prints the CPU (model, AVX2/AVX-512/AMX flags) and the TensorFlow build; on a shared machine read the ratio, not
the absolute times.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--data", default="package:tfsft/demo_data/tweets/test.csv", help="the split to predict")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each order (median reported)")
    args = parser.parse_args()

    from tfsft.cli import prepare_tensorflow_import

    prepare_tensorflow_import()
    import numpy as np

    from tfsft import evaluation
    from tfsft.config import load_config
    from tfsft.data import BadRecords
    from tfsft.modalities import get_modality
    from tfsft.model import build_model
    from tfsft.paths import resolve
    from tfsft.runtime import cpu_info, log_choices, tensorflow_build

    print(f"CPU: {cpu_info().describe()}\nTensorFlow: {tensorflow_build()}", flush=True)
    log_choices()
    config = load_config([args.config])
    modality = get_modality(config)
    records = modality.read(resolve(args.data, what="--data"), BadRecords())
    tmp = tempfile.mkdtemp(prefix="bench_eval_order_")
    atexit.register(shutil.rmtree, tmp, True)  # removed when the benchmark ends
    modality.prepare(records, Path(tmp))
    model = build_model(config, modality, modality.backbone(), 3)
    targets = np.zeros((len(records), 3), np.float32)
    batch = max(config.training.batch_size, 64)  # as evaluation.evaluate_records

    def timed(sort: bool) -> tuple[float, np.ndarray]:
        evaluation._SORTED = sort
        started = time.perf_counter()
        logits = evaluation.predict_logits(model, modality, records, targets, batch)
        return time.perf_counter() - started, logits

    _, sorted_logits = timed(True)
    _, file_logits = timed(False)
    times: dict[bool, list[float]] = {True: [], False: []}
    order_times = []
    for _ in range(args.repeats):
        for sort in (False, True):
            times[sort].append(timed(sort)[0])
            print(f"  {'length-sorted' if sort else 'file order'}: {times[sort][-1]:.1f} s", flush=True)
        started = time.perf_counter()
        modality.evaluation_order(records)
        order_times.append(time.perf_counter() - started)
    evaluation._SORTED = True

    unsorted, sorted_ = statistics.median(times[False]), statistics.median(times[True])
    n = len(records)
    print(f"{n} records, batch {batch}, max_length {config.text.max_length}, {args.repeats} timed passes each")
    print(f"  file order   : median {unsorted:6.1f} s ({n / unsorted:6.1f} ex/s)  runs {fmt(times[False])}")
    print(f"  length-sorted: median {sorted_:6.1f} s ({n / sorted_:6.1f} ex/s)  runs {fmt(times[True])}")
    print(f"  speed-up (file-order time / sorted time): x{unsorted / sorted_:.2f}")
    order_seconds = statistics.median(order_times)
    print(
        f"  of which the length pass (evaluation_order: tokenize + argsort): median {order_seconds:.2f} s "
        f"({order_seconds / sorted_:.1%} of the sorted pass)"
    )
    print(
        f"  max |logit difference| per record, sorted vs file order: "
        f"{float(np.abs(sorted_logits - file_logits).max()):.2e}"
    )


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
