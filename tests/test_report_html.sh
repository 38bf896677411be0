#!/usr/bin/env bash
# report.html in headless Chromium: every <img> loads (naturalWidth > 0), none is broken; a
# control page with one missing image proves the check can fail; a screenshot is saved under
# $BUILD/test-report-html/. Installs Debian `chromium` when missing (as root, at most 300 s);
# prints SKIP when it cannot be had.
set -u
BUILD=${BUILD:-build}
name=report_html_chromium
out="$BUILD/test-report-html"
report="$BUILD/report"
synth="$BUILD/tests/test_plots"
if [ ! -x "$report" ] || [ ! -x "$synth" ]; then
  echo "FAIL $name: $report or $synth not built"
  exit 1
fi

find_chromium() {
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}
chrome=$(find_chromium)
if [ -z "$chrome" ] && [ "$(id -u)" -eq 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { timeout 200 apt-get update -qq >/dev/null 2>&1 && timeout 300 apt-get install -y -qq chromium >/dev/null 2>&1; }
  chrome=$(find_chromium)
fi
if [ -z "$chrome" ]; then
  echo "SKIP $name: chromium not installable"
  exit 0
fi

rm -rf "$out"
mkdir -p "$out"
run="$out/run"
if ! "$synth" --write-run "$run" >"$out/synth.log" 2>&1; then
  echo "FAIL $name: could not write the synthetic run: $(tail -1 "$out/synth.log")"
  exit 1
fi
if ! "$report" -q "$run" >"$out/report.log" 2>&1; then
  echo "FAIL $name: report failed: $(tail -1 "$out/report.log")"
  exit 1
fi

# The check: after load, count images and those that failed (naturalWidth 0 or not complete).
checker='<script>window.addEventListener("load",function(){var im=document.images,b=0;for(var i=0;i<im.length;i++){if(!im[i].complete||im[i].naturalWidth===0)b++;}var p=document.createElement("pre");p.id="imgcheck";p.textContent="IMGCHECK total="+im.length+" broken="+b;document.body.appendChild(p);});</script>'
make_check() {  # src.html dst.html [extra html]: no auto-refresh, checker script before </body>
  grep -v 'http-equiv="refresh"' "$1" |
    awk -v add="${3:-}${checker}" '{ i = index($0, "</body>"); if (i) print substr($0, 1, i - 1) add substr($0, i); else print }' >"$2"
}
chrome_run() {  # extra args...
  timeout 120 "$chrome" --headless --disable-gpu --no-sandbox --disable-dev-shm-usage --hide-scrollbars \
    --user-data-dir="$out/profile" --virtual-time-budget=8000 "$@" 2>>"$out/chromium.log"
}
abs=$(cd "$run" && pwd)
make_check "$run/report.html" "$run/check.html"
make_check "$run/report.html" "$run/control.html" '<img src="missing.png" alt="missing">'
n_img=$(grep -o '<img ' "$run/report.html" | wc -l)

dom=$(chrome_run --dump-dom "file://$abs/check.html")
res=$(printf '%s\n' "$dom" | grep -o 'IMGCHECK total=[0-9]* broken=[0-9]*' | head -1)
ctl=$(chrome_run --dump-dom "file://$abs/control.html" | grep -o 'IMGCHECK total=[0-9]* broken=[0-9]*' | head -1)
chrome_run --screenshot="$(cd "$out" && pwd)/report_screenshot.png" --window-size=1280,6000 "file://$abs/report.html" >/dev/null

if [ -z "$res" ]; then
  echo "FAIL $name: no result from chromium --dump-dom (see $out/chromium.log)"
  exit 1
fi
total=${res#*total=}; total=${total%% *}; broken=${res##*broken=}
if [ "$total" -ne "$n_img" ] || [ "$n_img" -lt 10 ] || [ "$broken" -ne 0 ]; then
  echo "FAIL $name: $res, expected total=$n_img broken=0"
  exit 1
fi
echo "PASS $name ($total images, none broken)"
cb=${ctl##*broken=}
if [ -z "$ctl" ] || [ "$cb" != "1" ]; then
  echo "FAIL report_html_control: the control page with a missing image gave '$ctl' (expected broken=1)"
else
  echo "PASS report_html_control (a missing image is detected)"
fi
shot="$out/report_screenshot.png"
if [ -s "$shot" ] && [ "$(stat -c %s "$shot")" -gt 20000 ]; then
  echo "PASS report_html_screenshot ($shot)"
else
  echo "FAIL report_html_screenshot: no screenshot at $shot"
fi
# the comparison page too
"$synth" --write-run "$out/run2" >/dev/null 2>&1
if "$report" -q --compare "$out/cmp" "$run" "$out/run2" >"$out/compare.log" 2>&1; then
  cabs=$(cd "$out/cmp" && pwd)
  make_check "$out/cmp/compare.html" "$out/cmp/check.html"
  cres=$(chrome_run --dump-dom "file://$cabs/check.html" | grep -o 'IMGCHECK total=[0-9]* broken=[0-9]*' | head -1)
  if [ "$cres" = "IMGCHECK total=5 broken=0" ]; then
    echo "PASS compare_html_chromium"
  else
    echo "FAIL compare_html_chromium: '$cres' (expected total=5 broken=0)"
  fi
else
  echo "FAIL compare_html_chromium: report --compare failed: $(tail -1 "$out/compare.log")"
fi
