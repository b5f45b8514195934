"""Which students `student.name` reaches: the shipped ones by name, anything else as a hub id or folder."""

from __future__ import annotations

import importlib.util

import pytest

from kpod import models


def test_other_names_pass_through_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE_DIR", str(tmp_path))
    assert models.resolve_student("google/flan-t5-large") == "google/flan-t5-large"
    assert models.resolve_student(str(tmp_path / "my-model")) == str(tmp_path / "my-model")
    assert not any(tmp_path.iterdir())  # nothing converted, nothing downloaded


@pytest.mark.parametrize("name", sorted(models.SHIPPED_STUDENTS))
def test_a_shipped_student_without_its_package_says_how_to_install_it(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE_DIR", str(tmp_path))
    package = models.SHIPPED_STUDENTS[name].package
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real_find_spec(n, *a))
    with pytest.raises(RuntimeError, match=rf"{name}.*pip install"):
        models.resolve_student(name)


def test_a_converted_shipped_student_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("KPOD_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "models" / "gemma3-270m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a: pytest.fail("looked for the package again"))
    assert models.resolve_student("gemma3-270m") == str(folder)


def test_every_shipped_student_names_its_source_and_licence():
    for student in models.SHIPPED_STUDENTS.values():
        assert any(licence in student.source for licence in ("Apache-2.0", "Gemma Terms of Use"))
        assert "pip install" in student.install
