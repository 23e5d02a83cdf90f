"""Model-availability checks shared by the ControlNet backend and the SAM filter (no weights needed)."""

from __future__ import annotations

import pytest

from synthgen.errors import MissingModelError, UserError
from synthgen.generate import check_backend_models
from synthgen.generate.pipelines import check_models_available
from synthgen.generate.model_check import check_sam_model, hub_offline
from synthgen.recipe import ControlNetConfig, SamConfig

from tests.fixtures.recipes import small_recipe


@pytest.fixture
def online(monkeypatch):
    """The hub may be used; ``calls`` records every hub lookup."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    calls: list[str] = []
    return calls


def _hub(monkeypatch, calls: list[str], answer: Exception | None) -> None:
    def model_info(self, repo_id, **kwargs):
        calls.append(repo_id)
        if answer is not None:
            raise answer
        return object()

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", model_info)


def test_sam_and_controlnet_report_missing_models_alike(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingModelError) as sam:
        check_sam_model(SamConfig(model="synthgen-tests/uncached-sam"))
    with pytest.raises(MissingModelError) as net:
        check_models_available(ControlNetConfig(base_model="synthgen-tests/uncached-base",
                                                controlnets=[{"model": str(tmp_path), "layer": "depth"}]))
    for info, owner, field in ((sam, "the SAM filter", "filter.sam.model='synthgen-tests/uncached-sam'"),
                               (net, "the controlnet backend", "backend.controlnet.base_model=")):
        message = str(info.value)
        assert isinstance(info.value, UserError) and "\n" not in message
        assert message.startswith(f"{len(message.split(' | '))} model(s) of {owner} are not on disk (offline:")
        assert f"{field}" in message and "not in the Hugging Face cache and the hub is offline" in message
        assert "huggingface-cli download synthgen-tests/uncached-" in message and "hf download" in message
    assert str(sam.value).endswith("or set filter.sam: null to turn the SAM filter off")


def test_a_sam_folder_needs_the_processor_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(MissingModelError, match="no processor_config.json or preprocessor_config.json"):
        check_sam_model(SamConfig(model=str(tmp_path)))
    (tmp_path / "preprocessor_config.json").write_text("{}")
    check_sam_model(SamConfig(model=str(tmp_path)))


def test_uncached_sam_online_asks_the_hub_once(online, monkeypatch):
    _hub(monkeypatch, online, ConnectionError("no route to host"))
    with pytest.raises(MissingModelError, match="hub is unreachable") as info:
        check_sam_model(SamConfig(model="synthgen-tests/uncached-sam"))
    assert "(offline" not in str(info.value) and online == ["synthgen-tests/uncached-sam"]
    _hub(monkeypatch, online, None)  # the hub serves it: the loader may download it
    check_sam_model(SamConfig(model="synthgen-tests/uncached-sam"))


def test_hub_offline_reads_every_switch(online, monkeypatch):
    assert not hub_offline() and hub_offline(local_files_only=True)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        with monkeypatch.context() as m:
            m.setenv(key, "1")
            assert hub_offline()


def test_backend_check_fails_on_a_missing_sam_before_any_work(tmp_path):
    pytest.importorskip("transformers")
    recipe = small_recipe(filter={"sam": {"model": str(tmp_path / "no_sam")}})
    with pytest.raises(MissingModelError, match="filter.sam.model=.*no such local folder"):
        check_backend_models(recipe)
    check_backend_models(small_recipe())  # no SAM, shaded backend: nothing to check


def test_missing_controlnet_and_sam_reported_together(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = small_recipe(backend={"kind": "controlnet", "controlnet": {
        "base_model": str(tmp_path / "no_base"), "controlnets": [{"model": str(tmp_path / "no_cn"), "layer": "normal"}]}},
        filter={"sam": {"model": str(tmp_path / "no_sam")}})
    with pytest.raises(MissingModelError) as info:
        check_backend_models(recipe)
    message = str(info.value)
    assert "\n" not in message and "no_base" in message and "no_cn" in message
    assert "filter.sam.model=" in message and "no_sam" in message
