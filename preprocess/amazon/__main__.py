"""``python -m preprocess.amazon``: the Amazon builder's command line."""
from preprocess.amazon import main

main()
