/*
 * cpu_enter_ring3(RDI = per-CPU block): give this CPU its own GDT and TSS,
 * load the shared IDT and drop to ring 3.  Used by the BSP and by every AP.
 *
 * The per-CPU block is CPU_BLOCK_SIZE bytes, aligned to its size, and holds
 * both ring-0 stacks, so a handler finds its block as RSP & ~(size-1).
 *
 * GDT: 0x00 null, 0x08 kernel code, 0x10 kernel data, 0x18 user data,
 *      0x20 user code, 0x28 TSS (16 bytes).
 */
    .text
    .globl cpu_enter_ring3
cpu_enter_ring3:
    lea     {CPU_BLOCK_SIZE}(%rdi), %rsp            /* kernel stack top */

    lea     {CPU_GDT}(%rdi), %rsi
    movq    $0, (%rsi)
    movabs  $0x00af9b000000ffff, %rax               /* 64-bit code, DPL 0 */
    mov     %rax, 8(%rsi)
    movabs  $0x00cf93000000ffff, %rax               /* data, DPL 0 */
    mov     %rax, 16(%rsi)
    movabs  $0x00cff3000000ffff, %rax               /* data, DPL 3 */
    mov     %rax, 24(%rsi)
    movabs  $0x00affb000000ffff, %rax               /* 64-bit code, DPL 3 */
    mov     %rax, 32(%rsi)

    /* TSS descriptor: limit 103, type 0x89 (present, available 64-bit TSS). */
    lea     {CPU_TSS}(%rdi), %rdx
    mov     %rdx, %rax
    shl     $16, %rax
    movabs  $0x000000ffffff0000, %rcx               /* base[23:0] -> bits 16..39 */
    and     %rcx, %rax
    mov     %rdx, %rcx
    shr     $24, %rcx
    movzbl  %cl, %ecx
    shl     $56, %rcx                               /* base[31:24] -> bits 56..63 */
    or      %rcx, %rax
    movabs  $0x0000890000000067, %rcx
    or      %rcx, %rax
    mov     %rax, 40(%rsi)
    mov     %rdx, %rax
    shr     $32, %rax                               /* base[63:32] */
    mov     %rax, 48(%rsi)

    /* TSS: all zero but rsp0 (kernel stack), ist1 (fault stack) and the
       I/O-map base past the limit (no I/O bitmap). */
    xor     %eax, %eax
    mov     $13, %ecx
1:  mov     %rax, -8(%rdx,%rcx,8)
    dec     %ecx
    jnz     1b
    lea     {CPU_BLOCK_SIZE}(%rdi), %rax
    mov     %rax, 4(%rdx)
    lea     {CPU_IST_TOP}(%rdi), %rax
    mov     %rax, 0x24(%rdx)
    movw    $104, 0x66(%rdx)

    movw    $55, {CPU_GDTR}(%rdi)
    mov     %rsi, {CPU_GDTR}+2(%rdi)
    lgdt    {CPU_GDTR}(%rdi)

    /* Reload CS with a far return, then the data segments. */
    pushq   $0x08
    lea     2f(%rip), %rax
    push    %rax
    lretq
2:  mov     $0x10, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    xor     %eax, %eax
    mov     %eax, %fs
    mov     %eax, %gs
    mov     $0x28, %eax
    ltr     %ax
    lidt    {idt_descriptor}(%rip)

    /* iretq to ring 3 with IF=1 and IOPL=3 (port I/O runs natively where
       IOPL is honoured; under PVM it faults and #GP emulates it).  No
       interrupt source is armed yet: ring 3 programs its LAPIC after the IDT
       is full. */
    pushq   $0x1b                                   /* SS: user data | RPL 3 */
    pushq   {CPU_USER_STACK}(%rdi)
    pushq   $0x3202                                 /* IOPL=3, IF=1 */
    pushq   $0x23                                   /* CS: user code | RPL 3 */
    pushq   {CPU_USER_ENTRY}(%rdi)
    mov     {CPU_INDEX}(%rdi), %rdi
    iretq

/*
 * APs arrive here from the trampoline in long mode on our page tables, with
 * no stack.  The LAPIC ID (0xFEE00020 bits 31:24) picks the per-CPU block
 * that the BSP published for it.
 */
    .globl ap_long_mode_entry
ap_long_mode_entry:
    mov     $0xfee00020, %eax
    mov     (%rax), %eax
    shr     $24, %eax
    lea     {ap_block_by_apic_id}(%rip), %rdx
    mov     (%rdx,%rax,8), %rdi
    test    %rdi, %rdi
    jnz     cpu_enter_ring3
3:  cli
    hlt
    jmp     3b
