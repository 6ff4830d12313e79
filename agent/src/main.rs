//! The `cairn` command: parse flags, set up logging, run the command, map
//! the outcome to an exit code (0 ok, 1 failed, 3 incomplete).

use std::process::ExitCode;

fn main() -> ExitCode {
    cairn::cli::main()
}
