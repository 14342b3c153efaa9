"""The user study (the paper's Section 5.3 / Appendix D): people compare two methods' images side by side.

    python -m dbdpo.study build --out STUDY --compare RUN_A[:STAGE] RUN_B[:STAGE] [--compare ...]
    python -m dbdpo.study serve STUDY [--port 8000]
    python -m dbdpo.study results STUDY

`build` (build.py) pairs the two sides' evaluation images made with the same prompt and seed, `serve`
(server.py) shows them blind to assessors in a browser and stores every answer in SQLite (store.py), `results`
(results.py) turns the votes into Table 1 (Win / Lose / No Diff per question) beside CLIP's verdict.
"""

QUESTIONS = {
    1: "Which image is more consistent with the text prompt?",
    2: "Which image better represents the original image?",
    3: "Which image is generally better in terms of alignment with the prompt and concept identity preservation?",
}
ANSWERS = ("1", "2", "none")  # image 1, image 2, "Can't decide"
