fn main() -> anyhow::Result<()> {
    anyhow::bail!("host-sim: the proxy is not implemented yet")
}
