"""The miniature world: rendered scenes with captions, and the tiny models trained on them
(text-to-image, scorer and evaluator CLIPs, attribute oracle), so the method can be checked offline."""
