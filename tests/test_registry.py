"""visionzoo registers into timm without shadowing or replacing anything of timm's."""
import json
import subprocess
import sys
import textwrap

import visionzoo
from visionzoo.models._registry import FAMILIES, PREFIX


def test_no_timm_model_is_replaced_or_shadowed():
    """In a fresh interpreter: record timm's registry, import visionzoo, compare."""
    script = textwrap.dedent("""
        import json, timm
        from timm.models import _registry as r
        before = {n: id(r._model_entrypoints[n]) for n in timm.list_models()}
        pretrained = sorted(timm.list_pretrained())
        modules = set(timm.list_modules())
        import visionzoo
        after = {n: id(r._model_entrypoints[n]) for n in timm.list_models()}
        new = sorted(set(after) - set(before))
        print(json.dumps(dict(
            changed=[n for n in before if after.get(n) != before[n]],
            new=new,
            # visionzoo adds its own vz_* tags (released weights, _pretrained_sources); timm's stay as they were
            pretrained_same=sorted(n for n in timm.list_pretrained() if not n.startswith('vz_')) == pretrained,
            new_modules=sorted(set(timm.list_modules()) - modules),
            clashing_modules=sorted(set(visionzoo.list_families()) & modules),
        )))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["changed"] == []
    assert report["pretrained_same"]
    assert report["new"] == sorted(PREFIX + n for n in visionzoo.list_models())
    assert report["clashing_modules"] == []
    assert set(report["new_modules"]) == {fam.module.rsplit(".", 1)[-1] for fam in FAMILIES.values()}
