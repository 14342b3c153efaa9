"""Prompts: DreamBench evaluation sets, COCO-mined and concept-agnostic training prompts, the pool.

All prompts hold the placeholder `[V*]`; `format_prompt(p, "sks dog")` fills it in.
"""

from dbdpo.prompts.coco import CLASS_TO_COCO, mine_coco, normalise_class
from dbdpo.prompts.dreambench import (
    EVAL_SETS,
    PLACEHOLDER,
    SUBJECTS,
    Subject,
    eval_prompts,
    format_prompt,
    get_subject,
    prompt_source,
)
from dbdpo.prompts.pool import (
    CATEGORIES,
    PoolPrompt,
    PromptTruncatedWarning,
    build_pool,
    load_agnostic,
    read_pool,
    read_pool_parts,
    split_pool,
    truncate_prompt,
    write_pool,
)

__all__ = [
    "CATEGORIES",
    "CLASS_TO_COCO",
    "EVAL_SETS",
    "PLACEHOLDER",
    "SUBJECTS",
    "PoolPrompt",
    "PromptTruncatedWarning",
    "Subject",
    "build_pool",
    "eval_prompts",
    "format_prompt",
    "get_subject",
    "load_agnostic",
    "mine_coco",
    "normalise_class",
    "prompt_source",
    "read_pool",
    "read_pool_parts",
    "split_pool",
    "truncate_prompt",
    "write_pool",
]
