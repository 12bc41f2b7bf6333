"""Exact ground truth (stage 3, no torch): membership, parses, probabilities, next-token laws.

`cyk` answers "is it a sentence, how is it parsed, where and how far does it go wrong";
`inside` answers "how probable is it, and what comes next". Both run on the binarised grammar of
`normal_form` through the compiled chart sweep of `sweep`.
"""
