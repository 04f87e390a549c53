"""Command line: run a SimCLR stage from a config file.

    python -m simclr_jax.main --config=configs/demo.py [--workdir=DIR] [--config.field=value ...]

Without --workdir the run goes to workdirs/<config.name>. Rerunning the same command resumes from
the newest checkpoint in the workdir.
"""

import logging as python_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags


def _define_flags():
  config = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                           lock_config=True)
  workdir = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, TensorBoard events and results (default: '
    'workdirs/<config.name>).')
  flags.mark_flags_as_required(['config'])
  return config, workdir


class _QuietLibraries(python_logging.Filter):
  """Drops INFO chatter of orbax/tfds (dozens of lines per checkpoint); keeps their warnings."""

  NOISY = ('/orbax/', '/tensorflow_datasets/', '/clu/metric_writers/summary_writer')

  # Warnings that say nothing to a user: orbax on every restore of a checkpoint it wrote itself.
  MEANINGLESS = ('_CHECKPOINT_METADATA',)

  def filter(self, record: python_logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in self.NOISY)
    if noisy and any(text in record.getMessage() for text in self.MEANINGLESS):
      return False
    return record.levelno >= python_logging.WARNING or not noisy


def default_workdir(config_name: str) -> str:
  return os.path.join('workdirs', config_name)


def main(argv: list[str], flag_values) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config, workdir = (holder.value for holder in flag_values)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported after flag parsing so `--help` stays fast and JAX sees the final environment.
  import jax

  from simclr_jax import cli, run, validation
  from simclr_jax import workdir as workdir_lib

  if config.distributed.initialize:
    jax.distributed.initialize(
      coordinator_address=config.distributed.coordinator_address,
      num_processes=config.distributed.num_processes,
      process_id=config.distributed.process_id,
    )
  cli.start_jax()
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  workdir = workdir or default_workdir(config.name)
  logging.info('JAX %s: %d processes, %d devices (%s); workdir %s', jax.__version__,
               jax.process_count(), jax.device_count(), jax.devices()[0].platform, workdir)
  try:
    validation.validate_config(config, jax.device_count(), jax.process_count())
    workdir_lib.check_writable(workdir)  # Before any compile: a bucket missing or read-only.
    with workdir_lib.lock(workdir):
      all_results = run.run_stages(config, workdir)
  except (validation.ConfigError, FileNotFoundError) as error:
    if cli.verbose():
      raise
    sys.exit(f'error: {error}')  # One line, no traceback, no flag dump (SIMCLR_VERBOSE=1: both).
  except KeyboardInterrupt:  # Ctrl-C before the loop watches for it (loading, compiling).
    sys.exit('Interrupted before training started; nothing to resume was lost.')
  except workdir_lib.Preempted as stop:
    logging.warning('%s', stop)
    print(f'Stopped on request ({stop}); the same command resumes.')
    return
  print(f'\nResults in {workdir}:\n{run.results_table(all_results)}')


if __name__ == '__main__':
  from simclr_jax import cli

  cli.run(_define_flags, main)
