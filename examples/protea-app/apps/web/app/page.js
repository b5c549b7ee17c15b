export default function Page() {
  return (
    <main>
      <img src="/protea-mark.png" alt="" width="32" height="32" />
      <h1>PROTEA</h1>
      <p>page 1</p>
    </main>
  );
}
