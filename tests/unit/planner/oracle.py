"""Test-only helpers: random small snapshots, an independent plan checker and an exact MILP optimum.

The checker and the MILP read the snapshot's dict form and apply Kubernetes' filter rules on
their own, so a bug in cdmo.planner.eligibility cannot hide from them. Hardware rules come from
cdmo.mig.layouts (pinned by its own tests).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from cdmo.mig.catalog import find_model, get_model
from cdmo.mig.layouts import Instance, enumerate_layouts, validate_layout
from cdmo.mig.resources import profile_from_resource, resource_from_profile

LABEL = {"cdmo.clear.ml/gpu-partitioning": "mig"}
SMALL_MODELS = ("h100-80gb", "a100-40gb", "a30-24gb")


# --- random snapshots --------------------------------------------------------------------------


def random_snapshot(seed: int, *, max_nodes: int = 3, max_gpus: int = 2, max_pods: int = 8) -> dict[str, Any]:
    """A small snapshot with used instances, taints, selectors, affinity, priorities, multi-device pods."""
    rng = random.Random(seed)
    nodes = []
    cluster_models: list[str] = []
    for n in range(rng.randint(1, max_nodes)):
        labels = {"zone": rng.choice("ab")}
        if rng.random() < 0.9:
            labels.update(LABEL)
        if rng.random() < 0.3:
            labels["rack"] = str(rng.randint(1, 9))
        node: dict[str, Any] = {"name": f"node-{n}", "labels": labels}
        if rng.random() < 0.3:
            node["taints"] = [
                {
                    "key": "dedicated",
                    "value": rng.choice(["ml", "batch"]),
                    "effect": rng.choice(["NoSchedule", "NoExecute"]),
                }
            ]
        if rng.random() < 0.08:
            node["unschedulable"] = True
        model_key = rng.choice(SMALL_MODELS)
        gpus = []
        for g in range(rng.randint(1, max_gpus)):
            if rng.random() < 0.2:
                model_key = rng.choice(SMALL_MODELS)
            cluster_models.append(model_key)
            model = get_model(model_key)
            instances = []
            if rng.random() < 0.65:
                layouts = enumerate_layouts(model, include_variants=rng.random() < 0.2)
                layout = rng.choice(layouts)
                instances = [
                    {"profile": i.profile, "start": i.start, "used": rng.random() < 0.5} for i in layout
                ]
            gpus.append(
                {
                    "index": g,
                    "model": model_key if rng.random() < 0.7 else model.product_names[0],
                    "instances": instances,
                }
            )
        node["gpus"] = gpus
        nodes.append(node)
    pods = []
    for p in range(rng.randint(2, max_pods)):
        model = get_model(rng.choice(cluster_models) if rng.random() < 0.93 else rng.choice(SMALL_MODELS))
        base = [pr.name for pr in model.base_profiles]
        weights = [
            max(1, 8 - pr.placement_size * 8 // model.placement_axis_size) for pr in model.base_profiles
        ]
        demand: Counter[str] = Counter()
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
            demand[rng.choices(base, weights)[0]] += 1
        if rng.random() < 0.04:
            demand = Counter({model.profiles[1].name: 1})  # a +me variant
        pod: dict[str, Any] = {
            "name": f"pod-{p}",
            "namespace": rng.choice(["default", "ml"]),
            "requests": {resource_from_profile(k): v for k, v in sorted(demand.items())},
            "priority": rng.choice([0, 0, 1, 2]) if seed % 3 else 0,
        }
        if rng.random() < 0.25:
            pod["nodeSelector"] = {"zone": rng.choice("ab")}
        if rng.random() < 0.5:
            pod["tolerations"] = [
                rng.choice(
                    [
                        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
                        {"key": "dedicated", "operator": "Exists"},
                        {"operator": "Exists"},
                        {"key": "dedicated", "operator": "Equal", "value": "batch"},
                    ]
                )
            ]
        if rng.random() < 0.2:
            req = rng.choice(
                [
                    {"key": "zone", "operator": "In", "values": ["a"]},
                    {"key": "zone", "operator": "NotIn", "values": ["a"]},
                    {"key": "rack", "operator": "Exists"},
                    {"key": "rack", "operator": "DoesNotExist"},
                    {"key": "rack", "operator": "Gt", "values": ["4"]},
                    {"key": "rack", "operator": "Lt", "values": ["4"]},
                ]
            )
            pod["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [req]}]
                    }
                }
            }
        pods.append(pod)
    return {"nodes": nodes, "pending": pods}


# --- Kubernetes filters, written again on the dict form ----------------------------------------


def _req_ok(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = req["key"], req["operator"], [str(v) for v in req.get("values", [])]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if key not in labels:
        return False
    try:
        have, want = int(labels[key]), int(values[0])
    except ValueError:
        return False
    return have > want if op == "Gt" else have < want


def pod_fits_node(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    labels = {k: str(v) for k, v in (node.get("labels") or {}).items()}
    if labels.get("cdmo.clear.ml/gpu-partitioning") != "mig" or node.get("unschedulable"):
        return False
    if any(labels.get(k) != str(v) for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    terms = (
        ((pod.get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms")
    )
    if terms is not None and not any(
        t.get("matchExpressions") and all(_req_ok(r, labels) for r in t["matchExpressions"]) for t in terms
    ):
        return False
    for taint in node.get("taints") or []:
        if taint["effect"] not in ("NoSchedule", "NoExecute"):
            continue
        ok = False
        for tol in pod.get("tolerations") or []:
            if tol.get("effect") and tol["effect"] != taint["effect"]:
                continue
            if tol.get("key") and tol["key"] != taint["key"]:
                continue
            if tol.get("operator", "Equal") == "Exists" or str(tol.get("value", "")) == str(
                taint.get("value", "")
            ):
                ok = True
        if not ok:
            return False
    return True


def pod_key(pod: Mapping[str, Any]) -> str:
    return f"{pod.get('namespace', 'default')}/{pod['name']}"


def pod_demand(pod: Mapping[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for res, count in pod["requests"].items():
        if res.startswith("nvidia.com/mig-") and count:
            out[profile_from_resource(res)] += count
    return out


# --- the checker -------------------------------------------------------------------------------


def check_plan(snapshot: Mapping[str, Any], plan: Mapping[str, Any]) -> list[str]:
    """Every way ``plan`` (contract dict) breaks the contract's rules for ``snapshot``; [] if none."""
    problems: list[str] = []
    nodes = {n["name"]: n for n in snapshot["nodes"]}
    labelled = {
        name
        for name, n in nodes.items()
        if (n.get("labels") or {}).get("cdmo.clear.ml/gpu-partitioning") == "mig"
    }
    planned = {n["name"]: n for n in plan["nodes"]}
    if set(planned) != labelled:
        problems.append(f"plan nodes {sorted(planned)} != labelled nodes {sorted(labelled)}")
    layouts: dict[tuple[str, int], set[Instance]] = {}
    for name, pn in planned.items():
        src = nodes.get(name)
        if src is None:
            continue
        src_gpus = {g["index"]: g for g in src.get("gpus") or []}
        if {g["index"] for g in pn["gpus"]} != set(src_gpus):
            problems.append(f"{name}: GPU indexes differ from the snapshot")
        changed = False
        for g in pn["gpus"]:
            sg = src_gpus.get(g["index"])
            if sg is None:
                continue
            after = [Instance(i["profile"], i["start"]) for i in g["instances"]]
            before = {Instance(i["profile"], i["start"]) for i in sg.get("instances") or []}
            layouts[(name, g["index"])] = set(after)
            changed |= set(after) != before
            model = find_model(sg["model"])
            if model is None:
                if set(after) != before:
                    problems.append(f"{name} GPU {g['index']}: unknown model changed")
                continue
            if len(set(after)) != len(after):
                problems.append(f"{name} GPU {g['index']}: duplicate instances")
            bad = validate_layout(model, after)
            if bad:
                problems.append(f"{name} GPU {g['index']}: invalid layout: {bad}")
            for i in sg.get("instances") or []:
                if i["used"] and Instance(i["profile"], i["start"]) not in set(after):
                    problems.append(f"{name} GPU {g['index']}: used {i['profile']}@{i['start']} not kept")
        if pn["changed"] != changed:
            problems.append(
                f"{name}: changed is {pn['changed']} but the layout {'did' if changed else 'did not'} change"
            )
    pods = {pod_key(p): p for p in snapshot.get("pending") or []}
    seen: Counter[str] = Counter()
    given: set[tuple[str, int, Instance]] = set()
    for a in plan["assignments"]:
        seen[a["pod"]] += 1
        pod = pods.get(a["pod"])
        if pod is None:
            problems.append(f"assignment of unknown pod {a['pod']}")
            continue
        node = nodes.get(a["node"])
        if node is None or not pod_fits_node(pod, node):
            problems.append(f"{a['pod']} assigned to {a['node']}, which it may not use")
            continue
        got: Counter[str] = Counter()
        src_gpus = {g["index"]: g for g in node.get("gpus") or []}
        for d in a["devices"]:
            inst = Instance(d["profile"], d["start"])
            got[d["profile"]] += 1
            if inst not in layouts.get((a["node"], d["gpu"]), set()):
                problems.append(
                    f"{a['pod']}: device {inst} not in the desired layout of {a['node']} GPU {d['gpu']}"
                )
            src = {
                Instance(i["profile"], i["start"]): i["used"]
                for i in (src_gpus.get(d["gpu"]) or {}).get("instances") or []
            }
            if src.get(inst):
                problems.append(f"{a['pod']}: device {inst} is used in the snapshot")
            if (a["node"], d["gpu"], inst) in given:
                problems.append(f"{a['pod']}: device {inst} on {a['node']} GPU {d['gpu']} given twice")
            given.add((a["node"], d["gpu"], inst))
            if "new" in d and d["new"] != (inst not in src):
                problems.append(f"{a['pod']}: device {inst} new={d['new']} is wrong")
        if got != pod_demand(pod):
            problems.append(f"{a['pod']}: devices {dict(got)} != demand {dict(pod_demand(pod))}")
    for u in plan["unsatisfied"]:
        seen[u["pod"]] += 1
        if not u.get("reason"):
            problems.append(f"{u['pod']}: no reason")
    for key in pods:
        if seen[key] != 1:
            problems.append(f"{key} appears {seen[key]} times in assignments + unsatisfied")
    extra = set(seen) - set(pods)
    if extra:
        problems.append(f"unknown pods in the plan: {sorted(extra)}")
    return problems


# --- the exact optimum ------------------------------------------------------------------------


def _options(model_key: str, used: list[Instance], wanted: set[str]) -> list[tuple[int, ...]]:
    """Pareto-maximal vectors of extra instances (per wanted profile) over layouts that keep ``used``."""
    model = get_model(model_key)
    names = sorted(p for p in wanted if model.has_profile(p))
    variants = any(model.profile(p).is_variant for p in names) or any(
        model.profile(i.profile).is_variant for i in used
    )
    used_set = set(used)
    vectors = {tuple(0 for _ in names)}
    for layout in enumerate_layouts(model, include_variants=variants):
        if not used_set <= set(layout):
            continue
        extra = Counter(i.profile for i in layout if i not in used_set)
        vectors.add(tuple(extra[p] for p in names))
    maximal = [
        v
        for v in vectors
        if not any(w != v and all(a >= b for a, b in zip(w, v, strict=True)) for w in vectors)
    ]
    return [
        tuple(dict(zip(names, v, strict=True)).get(p, 0) for p in sorted(wanted)) for v in sorted(maximal)
    ]


def optimum_by_priority(snapshot: Mapping[str, Any]) -> dict[int, int]:
    """Pods served per priority in the priority-first optimum, solved level by level."""
    pods = list(snapshot.get("pending") or [])
    nodes = [
        n for n in snapshot["nodes"] if (n.get("labels") or {}).get("cdmo.clear.ml/gpu-partitioning") == "mig"
    ]
    demands = [pod_demand(p) for p in pods]
    wanted = sorted({q for d in demands for q in d})
    q_index = {q: i for i, q in enumerate(wanted)}
    gpu_opts: list[tuple[int, list[tuple[int, ...]]]] = []  # (node position, option vectors)
    for ni, node in enumerate(nodes):
        for g in node.get("gpus") or []:
            model = find_model(g["model"])
            if model is None:
                continue
            used = [Instance(i["profile"], i["start"]) for i in g.get("instances") or [] if i["used"]]
            gpu_opts.append((ni, _options(model.key, used, set(wanted))))
    x_vars = [
        (pi, ni)
        for pi, p in enumerate(pods)
        for ni, n in enumerate(nodes)
        if demands[pi] and pod_fits_node(p, n)
    ]
    y_vars = [(gi, oi) for gi, (_, opts) in enumerate(gpu_opts) for oi in range(len(opts))]
    nx, ny = len(x_vars), len(y_vars)
    levels = sorted({p.get("priority", 0) for p in pods}, reverse=True)
    result = {lvl: 0 for lvl in levels}
    if nx == 0:
        return result
    rows: list[np.ndarray] = []
    lbs: list[float] = []
    ubs: list[float] = []

    def add(row: np.ndarray, lb: float, ub: float) -> None:
        rows.append(row)
        lbs.append(lb)
        ubs.append(ub)

    for gi in range(len(gpu_opts)):
        row = np.zeros(nx + ny)
        for j, (g2, _) in enumerate(y_vars):
            if g2 == gi:
                row[nx + j] = 1
        add(row, 1, 1)
    for pi in range(len(pods)):
        row = np.zeros(nx + ny)
        for j, (p2, _) in enumerate(x_vars):
            if p2 == pi:
                row[j] = 1
        if row.any():
            add(row, 0, 1)
    for ni in range(len(nodes)):
        for q, qi in q_index.items():
            row = np.zeros(nx + ny)
            for j, (pi, n2) in enumerate(x_vars):
                if n2 == ni:
                    row[j] = demands[pi][q]
            for j, (gi, oi) in enumerate(y_vars):
                if gpu_opts[gi][0] == ni:
                    row[nx + j] = -gpu_opts[gi][1][oi][qi]
            if row[:nx].any():
                add(row, -np.inf, 0)
    for lvl in levels:
        c = np.zeros(nx + ny)
        for j, (pi, _) in enumerate(x_vars):
            if pods[pi].get("priority", 0) == lvl:
                c[j] = -1
        if not c.any():
            continue
        res = milp(
            c,
            constraints=LinearConstraint(np.array(rows), np.array(lbs), np.array(ubs)),
            integrality=np.ones(nx + ny),
            bounds=Bounds(0, 1),
        )
        assert res.status == 0, res.message
        best = round(-res.fun)
        result[lvl] = best
        add(-c, best, np.inf)
    return result


def served_by_priority(snapshot: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[int, int]:
    prio = {pod_key(p): p.get("priority", 0) for p in snapshot.get("pending") or []}
    out = {lvl: 0 for lvl in set(prio.values())}
    for a in plan["assignments"]:
        out[prio[a["pod"]]] += 1
    return out


# --- priority inversions ----------------------------------------------------------------------


def _fits_beside(models: list[str], kept: list[list[Instance]], demand: Counter[str]) -> bool:
    """Whether ``demand`` fits on GPUs of ``models`` that must keep ``kept`` (one list per GPU)."""
    wanted = sorted(demand)
    per_gpu = [_options(m, k, set(wanted)) for m, k in zip(models, kept, strict=True)]
    need = [demand[q] for q in wanted]

    def search(i: int, left: list[int]) -> bool:
        if all(x <= 0 for x in left):
            return True
        if i == len(per_gpu):
            return False
        return any(
            search(i + 1, [a - b for a, b in zip(left, vec, strict=True)]) for vec in per_gpu[i]
        ) or search(i + 1, left)

    return search(0, need)


def inversions(snapshot: Mapping[str, Any], plan: Mapping[str, Any]) -> list[str]:
    """Waiting pods that would fit on a node if the plan's lower-priority pods there were not.

    The contract's first rule (spec/planner-io.md, "What a plan aims for"): a pod is never left
    waiting so that pods of lower priority can be served in its place. Checked on the dict forms,
    node by node, with the hardware's layouts (cdmo.mig.layouts) and no code of the planner.
    """
    pods = {pod_key(p): p for p in snapshot.get("pending") or []}
    prio = {k: p.get("priority", 0) for k, p in pods.items()}
    nodes = {n["name"]: n for n in snapshot["nodes"]}
    layouts = {(n["name"], g["index"]): g["instances"] for n in plan["nodes"] for g in n["gpus"]}
    by_node: dict[str, list[Mapping[str, Any]]] = {}
    for a in plan["assignments"]:
        by_node.setdefault(a["node"], []).append(a)
    found = []
    for u in plan["unsatisfied"]:
        waiting = pods[u["pod"]]
        demand = pod_demand(waiting)
        if not demand:
            continue
        level = prio[u["pod"]]
        for name, src in sorted(nodes.items()):
            lower = [a for a in by_node.get(name, []) if prio[a["pod"]] < level]
            if not lower or not pod_fits_node(waiting, src):
                continue
            models, kept = [], []
            for g in src.get("gpus") or []:
                model = find_model(g["model"])
                if model is None:
                    continue
                keep = {Instance(i["profile"], i["start"]) for i in g.get("instances") or [] if i["used"]}
                for a in by_node.get(name, []):
                    if prio[a["pod"]] >= level:
                        keep |= {
                            Instance(d["profile"], d["start"]) for d in a["devices"] if d["gpu"] == g["index"]
                        }
                models.append(model.key)
                kept.append(sorted(keep, key=lambda i: (i.start, i.profile)))
                assert (name, g["index"]) in layouts
            if models and _fits_beside(models, kept, demand):
                found.append(
                    f"{u['pod']} (priority {level}) fits on {name} without {[a['pod'] for a in lower]}"
                )
    return found
