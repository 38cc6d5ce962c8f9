"""`make run` on a fresh clone, timed as a new user lives it (issue 12: "a first answer in a minute").

    git clone <repo> /tmp/fresh && .venv/bin/python benchmarks/make_run_timing.py /tmp/fresh > result.json

Starts `make run` in the clone (install, demo shop, quick model, API, full model in the background) and polls
every second: when the install step ends (the venv's stamp file), when `/readyz` first answers, when all four
placements answer with items (using the demo key `make run` prints), and when `/readyz` reports the full model
live. Prints the marks (seconds since launch) and the load average; stops `make run`. Port 8000 must be free.
"""
import json, subprocess, sys, time, os, signal
import urllib.request
clone = sys.argv[1]
LOG = os.path.join(clone, "make_run.log")
log = open(LOG, "w")
t0 = time.time()
proc = subprocess.Popen(["make", "run"], cwd=clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
def get(path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:8000" + path, timeout=5) as r:
            return r.status, r.read()
    except Exception as e:
        return getattr(e, "code", None), b""
marks = {}
key = None
while time.time() - t0 < 1500:
    if "install_end" not in marks and os.path.exists(f"{clone}/.venv/.installed"):
        marks["install_end"] = time.time() - t0
    st, body = get("/readyz")
    if st == 200:
        d = json.loads(body)
        if "api_ready" not in marks:
            marks["api_ready"] = time.time() - t0
            marks["first_model"] = d.get("model")
        if key is None:
            txt = open(LOG).read()
            import re
            m = re.search(r"(sw_sk_[A-Za-z0-9_-]{60,})", txt)
            key = m.group(1) if m else None
        if "all_placements" not in marks:
            ok = True
            for p in ("homepage?user_id=u00042", "pdp_similar?item_id=i000001", "pdp_fbt?item_id=i000001", "cart_upsell?cart=i000001"):
                req = urllib.request.Request("http://127.0.0.1:8000/v1/recommendations/" + p, headers={"Authorization": f"Bearer {key}"} if key else {})
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        n = len(json.loads(r.read())["items"]); ok = ok and r.status == 200 and n > 0
                except Exception as e:
                    ok = False; marks.setdefault("placement_errors", []).append(f"{p}: {e}")
            if ok:
                marks["all_placements"] = time.time() - t0
        if d.get("model", {}).get("full"):
            marks["full_model_live"] = time.time() - t0
            marks["full_model"] = d.get("model"); marks["training"] = d.get("training")
            break
    time.sleep(1)
marks["load_average"] = os.getloadavg()
print(json.dumps(marks, indent=1))
os.killpg(proc.pid, signal.SIGTERM)
