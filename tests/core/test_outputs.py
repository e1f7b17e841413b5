"""Output folders: the manifest says what slimforge wrote; a new run removes only the previous run's files."""

from __future__ import annotations

import pytest

from slimforge.core.outputs import atomic_path
from slimforge.core.outputs import (MANIFEST, claim_output_dir, prepare_output_dir, prepare_output_file,
                                    read_manifest, write_text)
from slimforge.errors import OutputError


def test_a_new_run_removes_the_last_runs_files_and_keeps_other_slimforge_and_user_files(tmp_path):
    out = tmp_path / "out"
    with claim_output_dir(out) as d:
        write_text(d / "report.json", "{run 1}")
        write_text(d / "model.onnx", "model 1")
    write_text(out / "m-dynamic.onnx", "a quantize output, written later by another command")
    (out / "notes.txt").write_text("the user's")
    with claim_output_dir(out) as d:
        assert not (d / "report.json").exists() and not (d / "model.onnx").exists()
        write_text(d / "report.json", "{run 2}")
    assert (out / "m-dynamic.onnx").exists() and (out / "notes.txt").read_text() == "the user's"
    assert set(read_manifest(out)) == {"report.json", "m-dynamic.onnx"}


def test_a_failed_run_removes_what_it_wrote_and_the_folder_it_made(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_output_dir(tmp_path / "new") as d:
            write_text(d / "half.onnx", "x")
            raise RuntimeError("the step failed")
    assert not (tmp_path / "new").exists()


def test_foreign_files_are_refused_and_never_replaced_even_with_force(tmp_path):
    (tmp_path / "report.json").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        prepare_output_dir(tmp_path)
    prepare_output_dir(tmp_path, force=True)
    with pytest.raises(OutputError, match="report.json"):
        write_text(tmp_path / "report.json", "theirs")
    assert (tmp_path / "report.json").read_text() == "mine"
    with pytest.raises(OutputError, match="did not write"):
        prepare_output_file(tmp_path / "report.json")


def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"tool": "slimforge", "files": ["../victim.txt", "/etc/passwd"], '
                                '"run": ["../victim.txt", "/etc/passwd"]}')
    prepare_output_dir(out)
    assert victim.read_text() == "keep" and read_manifest(out) == []


def test_an_existing_folder_is_never_replaced_by_a_file(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "data.txt").write_text("precious")
    with pytest.raises(OutputError, match="folder"):
        with atomic_path(tmp_path / "keep") as tmp:
            tmp.write_text("x")
    assert (tmp_path / "keep" / "data.txt").read_text() == "precious"
