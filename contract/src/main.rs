//! Prints the contract as JSON: `cargo run -p lookat-contract > contract/contract.json`.

fn main() {
    print!("{}", lookat_contract::json());
}
