"""The vLLM evaluation engine's glue: export (LoRA merged, caller's model untouched), sampling settings, trimming.

vLLM itself needs a GPU, so a stand-in `vllm` module takes its place here: it loads the exported folder with
transformers and decodes greedily, as vLLM would. What is checked is kpod's side of the contract.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kpod.data.records import Question
from kpod.evaluation.evaluate import evaluate_questions
from kpod.models import add_lora, build_tiny_model


class _Completion:
    def __init__(self, text, token_ids):
        self.text, self.token_ids = text, token_ids


class _Result:
    def __init__(self, prompt_ids, completion):
        self.prompt_token_ids, self.outputs = prompt_ids, [completion]


def fake_vllm(calls: dict, scripted_text: str) -> types.ModuleType:
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model: str, seed: int = 0):
            calls["folder"] = model
            self.model = AutoModelForCausalLM.from_pretrained(model)  # what vLLM would serve

        def generate(self, prompts, params, use_tqdm=True):
            calls["params"], calls["prompts"] = params.kwargs, list(prompts)
            return [_Result([1, 2, 3], _Completion(scripted_text, [5] * 7)) for _ in prompts]

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_vllm_engine_exports_the_merged_student_and_trims_outputs(smol_tokenizer, tmp_path, monkeypatch):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls, " 2 + 3 = 5. Therefore, the answer is 5. Q: more"))
    model = add_lora(build_tiny_model("llama", smol_tokenizer, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
    for name, p in model.named_parameters():  # a non-zero adapter, so merging changes the weights
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    questions = [Question(id="q1", question="What is 2 + 3?", answer="5", dataset="svamp"),
                 Question(id="q2", question="What is 1 + 1?", answer="2", dataset="svamp")]
    res = evaluate_questions(model, smol_tokenizer, questions, dataset="svamp", split="test", out_dir=tmp_path / "ev",
                             engine="vllm", engine_dir=tmp_path / "vllm-model", max_new_tokens=64)
    assert calls["params"] == {"n": 1, "temperature": 0.0, "max_tokens": 64, "stop": ["\nQ:"]}
    assert len(calls["prompts"]) == 2 and "2 + 3" in calls["prompts"][0]
    assert res["correct"] == 1 and res["generation"]["engine"] == "vllm"  # "5" right for q1, wrong for q2
    assert res["generation"]["useful_tokens"] == 14
    # The exported folder holds the merged model: same logits as the LoRA model.
    exported = AutoModelForCausalLM.from_pretrained(calls["folder"])
    ids = torch.tensor([[1, 5, 9, 13]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, model(input_ids=ids).logits, atol=1e-4)
    assert Path(calls["folder"], "tokenizer_config.json").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's model unchanged


def test_vllm_engine_says_how_to_install_it(smol_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as if vLLM were not installed
    model = build_tiny_model("llama", smol_tokenizer)
    with pytest.raises(RuntimeError, match="kpod\\[vllm\\]"):
        evaluate_questions(model, smol_tokenizer, [Question(id="q", question="1 + 1?", answer="2", dataset="svamp")], dataset="svamp",
                           split="test", engine="vllm", engine_dir=tmp_path / "m")
