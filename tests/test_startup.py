"""Process start-up (tfsft.cli.startup): `import keras` without the optional packages Keras would import eagerly,
which then still import normally for the code that uses them; the import's objects frozen out of later garbage
collections, which still collect what the program makes afterwards."""

import json
import subprocess
import sys

from conftest import REPO

PROBE = """
import json, sys
from tfsft.cli import prepare_tensorflow_import
prepare_tensorflow_import()
import keras
after_keras = {name: name in sys.modules for name in ("sklearn", "matplotlib", "tensorflow")}
from sklearn.metrics import f1_score
import matplotlib.pyplot as plt
plt.figure()
print(json.dumps({"after_keras": after_keras, "f1": f1_score([0, 1, 1], [0, 1, 0], average="macro"),
                  "hook_left": [type(f).__name__ for f in sys.meta_path if type(f).__module__ == "tfsft.cli.startup"]}))
"""


def test_keras_import_skips_sklearn_and_matplotlib_which_still_import_afterwards():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["after_keras"] == {"sklearn": False, "matplotlib": False, "tensorflow": True}
    assert abs(out["f1"] - 2 / 3) < 1e-9  # each class: F1 2/3
    assert out["hook_left"] == []  # both start-up hooks remove themselves after their one import


def test_packages_imported_before_keras_are_left_alone():
    probe = (
        "import sys, sklearn\n"
        "from tfsft.cli import prepare_tensorflow_import\n"
        "prepare_tensorflow_import()\n"
        "import keras\n"
        "from keras.src.wrappers import fixes\n"
        "print(fixes.sklearn is sys.modules['sklearn'])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


GC_PROBE = """
import gc, json, weakref
from tfsft.cli import prepare_tensorflow_import
prepare_tensorflow_import()
{before}
import keras
frozen = gc.get_freeze_count()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a reference cycle: only the collector frees it
alive = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({{"frozen": frozen, "enabled": gc.isenabled(), "cycle_freed": alive() is None}}))
"""


def test_keras_import_objects_are_frozen_and_later_garbage_is_still_collected():
    result = subprocess.run(
        [sys.executable, "-c", GC_PROBE.format(before="")], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["frozen"] > 100_000  # Keras + TensorFlow: ~300,000 objects no later collection walks
    assert out["enabled"] is True
    assert out["cycle_freed"] is True


def test_garbage_collection_the_user_turned_off_stays_off():
    result = subprocess.run(
        [sys.executable, "-c", GC_PROBE.format(before="gc.disable()")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["enabled"] is False
    assert out["cycle_freed"] is True  # an explicit gc.collect() still works
