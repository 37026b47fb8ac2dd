"""Batch jobs on Apache Beam (`pip install 'tfrec[beam]'`).

`beam_recommend`: every known user's top k, the job `tfrec recommend
--all-users` runs in one process, as a Beam pipeline (DirectRunner by default,
any Beam runner through the usual pipeline options).
"""
