"""What makes an ingested document stale: a change to a setting, the code or a library pin that
shapes a stage's output, in exactly the stages it shapes; never a comment or a docstring."""

from __future__ import annotations

import pytest

from include import fingerprints
from include.fingerprints import SPECS, EnvironmentMismatch, check_installed, stage_fingerprint
from include.settings import PipelineSettings
from include.stages import STAGES


def _changed(before: PipelineSettings, after: PipelineSettings) -> set[str]:
    return {name for name, spec in SPECS.items()
            if stage_fingerprint(spec, before) != stage_fingerprint(spec, after)}


def test_a_setting_marks_exactly_the_stages_it_shapes():
    local = PipelineSettings()
    assert _changed(local, local.model_copy(update={"chunk_max_tokens": 96})) == {"chunk"}
    other_model = local.model_copy(update={"embed_model": "/models/other-minilm"})
    assert _changed(local, other_model) == {"chunk", "embed"}
    assert _changed(local, local.model_copy(update={"chroma_collection": "other"})) == {"load"}
    # No stage calls an OpenAI-compatible API here: where one would be served shapes nothing.
    assert _changed(local, local.model_copy(update={"openai_base_url": "http://vllm:8000/v1"})) == set()


def test_an_openai_base_url_marks_the_stages_that_call_it():
    cloud = PipelineSettings(embedder="openai", enricher="openai")
    moved = cloud.model_copy(update={"openai_base_url": "http://vllm:8000/v1"})
    assert _changed(cloud, moved) == {"enrich", "embed"}  # the chunks' tokenizer depends on the model only
    described = cloud.model_copy(update={"describe_pictures": True})
    assert "extract" in _changed(described, described.model_copy(update={"openai_base_url": "http://x/v1"}))


def _fingerprint_of_source(tmp_path, monkeypatch, source: str) -> str:
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "mod.py").write_text(source)
    monkeypatch.setattr(fingerprints, "PROJECT_ROOT", tmp_path)
    fingerprints.code_fingerprint.cache_clear()
    try:
        return fingerprints.code_fingerprint(fingerprints.StageSpec("s", lambda s: (), ("pkg.mod",)))
    finally:
        fingerprints.code_fingerprint.cache_clear()


def test_comments_docstrings_and_layout_reprocess_nothing_and_a_code_change_does(tmp_path, monkeypatch):
    original = '"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return x * 2\n'
    reworded = ('"""Module, reworded at length."""\n\n\n# why it doubles\ndef f(x):\n    """Twice x."""\n\n'
                '    return x * 2  # a comment\n')
    changed = '"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return x * 3\n'
    first = _fingerprint_of_source(tmp_path, monkeypatch, original)
    assert _fingerprint_of_source(tmp_path, monkeypatch, reworded) == first
    assert _fingerprint_of_source(tmp_path, monkeypatch, changed) != first


def test_every_stage_library_is_pinned_and_this_worker_runs_the_pins():
    for spec in SPECS.values():
        installed = check_installed(spec)
        assert set(installed) == {fingerprints.normalized_name(library) for library in spec.libraries}


def test_a_worker_with_other_versions_refuses_to_run_the_stage(monkeypatch):
    real = fingerprints.importlib.metadata.version
    monkeypatch.setattr(fingerprints.importlib.metadata, "version",
                        lambda name: "99.0" if name == "torch" else real(name))
    expected = r"embed: this worker runs torch 99.0 \(pinned 2\.13\.0\)"
    with pytest.raises(EnvironmentMismatch, match=expected) as err:
        check_installed(SPECS["embed"])
    assert err.value.retryable is False


def test_every_declared_stage_has_its_code_in_the_same_order():
    assert tuple(STAGES) == tuple(SPECS)
    for name, stage in STAGES.items():
        assert stage.spec is SPECS[name] and stage.worker.__module__ == SPECS[name].code_modules[0]
