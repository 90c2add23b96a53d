"""The daily DAG (cain_daily.py) and the release CLI it calls (release.py)."""
