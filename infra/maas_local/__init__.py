"""The local emulator: moto's server plays AWS; the production handlers run in this process."""
