//! `rollout preflight` (being written).

use crate::cli::PreflightArgs;

pub fn main(_args: PreflightArgs) -> u8 {
    crate::exit::USAGE
}
