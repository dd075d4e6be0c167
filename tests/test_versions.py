"""The one set of version-folder rules that export, predict, serve and bench_serve share."""

from tfsft.versions import (
    latest_version_dir,
    model_name_problem,
    next_version,
    version_folders,
    version_of,
    version_problem,
)


def make_version(model_dir, name, marker="saved_model.pb"):
    folder = model_dir / name
    folder.mkdir(parents=True)
    if marker:
        (folder / marker).write_bytes(b"")
    return folder


def test_only_ascii_integer_folders_with_the_marker_are_versions(tmp_path):
    model = tmp_path / "m"
    make_version(model, "1")
    make_version(model, "10")
    make_version(model, "3", marker=None)  # an unfinished or ONNX-only folder: not servable
    make_version(model, ".tmp-11-x")  # an export in progress
    make_version(model, "v12")
    make_version(model, "١٣")  # Arabic-Indic digits: str.isdigit() says yes, TF Serving says no
    make_version(model, "99999999999999999999")  # beyond int64
    (model / "7").write_text("a file, not a folder")
    assert sorted(version_folders(model)) == [1, 10]
    assert sorted(version_folders(model, marker=None)) == [1, 3, 10]
    assert latest_version_dir(model) == model / "10"
    assert latest_version_dir(model, marker="model.onnx") is None
    assert version_folders(tmp_path / "missing") == {} and latest_version_dir(tmp_path / "missing") is None


def test_next_version_is_above_every_version_folder_complete_or_not(tmp_path):
    model = tmp_path / "m"
    assert next_version(model) == 1
    make_version(model, "2")
    make_version(model, "5", marker=None)
    assert next_version(model) == 6


def test_version_numbers_and_model_names():
    assert [version_of(n) for n in ("0", "7", "007", "-3", "3.0", "")] == [0, 7, 7, None, None, None]
    assert version_problem(1) is None and version_problem(2**63 - 1) is None
    for bad in (0, -3, 2**63, True, "3"):
        assert version_problem(bad)
    assert model_name_problem("sentiment-v2.1_x") is None
    for bad in ("", ".", "..", "../outside", "a/b", "a\\b", ".hidden", "two words", "a:b"):
        assert model_name_problem(bad), bad
