"""RouteMQ's job directory for the benchmark (ROUTEMQ_JOB_DIRECTORY): its worker imports every module here."""
