"""export: ipynb -> percent text; build: percent text -> ipynb (outputs dropped, metadata kept)."""
import json, re, sys
from pathlib import Path

HDR = re.compile(r'^# %%(?P<md> \[markdown\])?(?P<rest>.*)$')

def export(nb_path, out):
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"])
        tags = c.get("metadata", {}).get("tags", [])
        hidden = c.get("metadata", {}).get("jupyter", {}).get("source_hidden", False)
        head = "# %% [markdown]" if c["cell_type"] == "markdown" else "# %%"
        if tags: head += " tags=" + json.dumps(tags)
        if hidden: head += " hidden"
        parts.append(head + "\n" + src.rstrip("\n") + "\n")
    Path(out).write_text("\n".join(parts))

def build(src_path, nb_path):
    lines = Path(src_path).read_text().splitlines()
    cells, cur = [], None
    for line in lines:
        m = HDR.match(line)
        if m:
            if cur: cells.append(cur)
            rest = m.group("rest")
            tags = []
            tm = re.search(r'tags=(\[[^\]]*\])', rest)
            if tm: tags = json.loads(tm.group(1))
            meta = {}
            if tags: meta["tags"] = tags
            if " hidden" in rest: meta["jupyter"] = {"source_hidden": True}
            cur = {"type": "markdown" if m.group("md") else "code", "meta": meta, "lines": []}
        else:
            cur["lines"].append(line)
    cells.append(cur)
    p = Path(nb_path)
    old = json.loads(p.read_text()) if p.exists() else {"metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = []
    for i, c in enumerate(cells):
        text = "\n".join(c["lines"]).strip("\n")
        src = [l + "\n" for l in text.split("\n")]
        src[-1] = src[-1].rstrip("\n")
        cell = {"cell_type": c["type"], "id": f"c{i:02d}", "metadata": c["meta"], "source": src}
        if c["type"] == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        out.append(cell)
    old["cells"] = out
    p.write_text(json.dumps(old, indent=1, ensure_ascii=False) + "\n")

if __name__ == "__main__":
    {"export": export, "build": build}[sys.argv[1]](sys.argv[2], sys.argv[3])
