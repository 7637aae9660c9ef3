"""Build `configs/dvc_plots/offline.html`: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` writes a page that loads these three libraries from a CDN, so it is blank without network. This
template carries them inside (their BSD-3-Clause licences beside it, in `LICENSES.md`), and `.dvc/config` points
`plots.html_template` at it. Run again to upgrade: python scripts/vendor_vega.py [vega lite embed versions].
"""

from __future__ import annotations

import io
import sys
import tarfile
import urllib.request
from pathlib import Path

OUT = Path("configs/dvc_plots")
PACKAGES = {"vega": "5.30.0", "vega-lite": "5.21.0", "vega-embed": "6.26.0"}
PAGE = """<!DOCTYPE html>
<html lang="es">
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>habla: plots</title>
    <!-- Vega {vega}, Vega-Lite {vega-lite}, Vega-Embed {vega-embed}, inlined by scripts/vendor_vega.py (BSD-3-Clause,
         see LICENSES.md): this page draws without network. -->
    <style>
        body { font-family: system-ui, sans-serif; margin: 1rem; }
        table { border-spacing: 15px; }
    </style>
{scripts_inline}
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str) -> tarfile.TarFile:
    url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a fixed https URL
        return tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")


def main(versions: list[str]) -> None:
    packages = dict(zip(PACKAGES, versions, strict=True)) if versions else PACKAGES
    scripts, licences = [], ["# Licences of the libraries inlined in offline.html\n"]
    for name, version in packages.items():
        archive = fetch(name, version)
        code = archive.extractfile(f"package/build/{name}.min.js").read().decode("utf-8")
        licence = archive.extractfile("package/LICENSE").read().decode("utf-8")
        code = code.replace("</script", "<\\/script")  # the code must not end the tag it sits in
        scripts.append(f"    <script>\n{code}\n    </script>")
        licences.append(f"\n## {name} {version}\n\n```\n{licence.strip()}\n```\n")
    page = PAGE.replace("{scripts_inline}", "\n".join(scripts))
    for name, version in packages.items():
        page = page.replace("{" + name + "}", version, 1)
    (OUT / "offline.html").write_text(page, encoding="utf-8")
    (OUT / "LICENSES.md").write_text("".join(licences), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
