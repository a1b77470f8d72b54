"""``python -m preprocess.movielens``: the MovieLens builder's command line."""
from preprocess.movielens import main

main()
