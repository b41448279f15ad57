"""Many studies at once: ``fuse-cohort`` and the study tasks a workflow runs on Dask (issue 15).

* :mod:`~medfuse.study.cohort.child` -- one study's work in a child process
  with a time limit and one thread;
* :mod:`~medfuse.study.cohort.executor` -- where the tasks run: a Dask
  scheduler, local worker processes, or one after another;
* :mod:`~medfuse.study.cohort.studies` -- a cohort folder's studies, their
  output folders, and whether each is finished;
* :mod:`~medfuse.study.cohort.run` -- a resumable pass over a cohort.
"""
