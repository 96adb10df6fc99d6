"""The project's layout, checked from the source: the import graph runs downward (stages import only core/
and their own package; nothing below eval/, pitrack/ and training/ imports them) and has no cycle; every
relative link of README.md and docs/ resolves; docs/config.md documents every key of configs/default.yaml."""
import ast
import collections
import os
import re

import yaml

from conftest import ROOT

CORE = "core"
STAGES = ("flow", "features", "tto", "filters", "fusion", "synthetic")
TOP = ("eval", "pitrack", "training", "run_video")
PACKAGES = (CORE,) + STAGES + TOP[:-1]


def modules():
    """{module name: file} of every project module (packages as their __init__)."""
    out = {"run_video": os.path.join(ROOT, "run_video.py")}
    for pkg in PACKAGES:
        for f in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if f.endswith(".py"):
                out[pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"] = os.path.join(ROOT, pkg, f)
    return out


def import_graph(mods):
    """{module: {project modules it imports}}, from every import statement in the file (function-level ones
    included: a lazy import is an import)."""
    graph = collections.defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def layer_problems(graph):
    """Imports that run upward or across stages: (importer, imported, why)."""
    out = []
    for m, targets in sorted(graph.items()):
        top = m.split(".")[0]
        for t in sorted(targets):
            t_top = t.split(".")[0]
            if top in (CORE,) + STAGES and t_top in TOP:
                out.append((m, t, "a stage or core/ imports a layer above it"))
            elif top == CORE and t_top in STAGES:
                out.append((m, t, "core/ imports a stage"))
            elif top in STAGES and t_top in STAGES and t_top != top:
                out.append((m, t, "a stage imports another stage (share it through core/)"))
    return out


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_imports_run_downward():
    problems = layer_problems(import_graph(modules()))
    assert not problems, "\n".join(f"{m} imports {t}: {why}" for m, t, why in problems)


def test_no_two_modules_import_each_other_nor_any_cycle():
    found = cycles(import_graph(modules()))
    assert not found, f"import cycles: {found}"


def test_the_checks_see_an_upward_import_and_a_cycle():
    """The checks themselves, on a graph with one upward import and one pair importing each other."""
    graph = {"flow.bank": {"eval.calibration", "core.coords"}, "core.coords": {"core.errors"},
             "features.backbones": {"features.geoaware"}, "features.geoaware": {"features.backbones"},
             "tto.train": {"features.grid"}}
    assert [(m, t) for m, t, _ in layer_problems(graph)] == [("flow.bank", "eval.calibration"),
                                                             ("tto.train", "features.grid")]
    assert cycles(graph) == [["features.backbones", "features.geoaware"]]


def markdown_files():
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))


def test_every_relative_link_resolves():
    """[text](path) and ![alt](path) links and <img src=...> in README.md and docs/*.md that are not URLs
    or anchors name an existing file (anchors after '#' are ignored)."""
    bad = []
    for md in markdown_files():
        text = open(md, encoding="utf-8").read()
        targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text) + re.findall(r'src="([^"]+)"', text)
        for t in targets:
            if re.match(r"[a-z]+:", t) or t.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(md), t.split("#")[0]))
            if not os.path.exists(path):
                bad.append(f"{os.path.relpath(md, ROOT)}: {t}")
    assert not bad, bad


def test_readme_is_short():
    assert len(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()) <= 250


def config_keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= config_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def documented_keys(text):
    """The keys of docs/config.md: the first cell of its table rows, in backquotes."""
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", text, re.M))


def test_every_config_key_is_documented_once_and_nothing_else():
    with open(os.path.join(ROOT, "configs", "default.yaml"), encoding="utf-8") as f:
        keys = config_keys(yaml.safe_load(f))
    text = open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8").read()
    doc = documented_keys(text)
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \|", text, re.M)
    assert len(rows) == len(doc), [k for k in doc if rows.count(k) > 1]
    assert keys - doc == set(), f"keys of default.yaml not in docs/config.md: {sorted(keys - doc)}"
    assert doc - keys == set(), f"docs/config.md documents keys default.yaml lacks: {sorted(doc - keys)}"
