"""Fractional GPU asks (ClearML CFGI, KAI, MetaGPU, GPU memory) -> MIG profiles.

Pure: imports nothing of Kubernetes, kopf or NVML. ``rule`` holds the rule, ``asks`` reads the
asks off a pod, ``pods`` decides a pod (model, profile, JSON patch), ``jsonpatch`` applies a patch.
"""

from cdmo.translate.asks import Ask, InvalidAsk, read_asks
from cdmo.translate.pods import ASK_ANNOTATION, REASON_ANNOTATION, Translation, translate_pod
from cdmo.translate.rule import Choice, Need, NoFit, Rule, choose_profile

__all__ = [
    "ASK_ANNOTATION",
    "REASON_ANNOTATION",
    "Ask",
    "Choice",
    "InvalidAsk",
    "Need",
    "NoFit",
    "Rule",
    "Translation",
    "choose_profile",
    "read_asks",
    "translate_pod",
]
